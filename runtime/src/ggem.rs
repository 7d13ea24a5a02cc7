//! GGeM pooling as one fused op: the tract rewrite that finds the exported
//! subgraph, and the CPU kernel that evaluates it.
//!
//! `torch.onnx.export` writes a GGeM head as about six ops (Clip or Max, Pow
//! with per-channel exponents, ReduceMean over tokens as Sum and Div, Pow with
//! the reciprocal exponents). In tract each is a full pass over `[B, N, C]`
//! with its own output tensor. The rewrite replaces the chain from the clamp to
//! the root with one [`Ggem`] node; everything around it is untouched.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::math::{Div, Max, Mul, Pow};
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

/// Channels processed together: their running maxima and sums stay on the stack.
const TILE: usize = 64;

/// `y[b, c] = (mean_n max(x[b, n, c], eps) ^ p[c]) ^ (1 / p[c])` over `x: [B, N, C]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ggem {
    /// Number of channel groups sharing one exponent (for reporting and kernels).
    pub groups: usize,
    /// Clamp floor, > 0.
    pub eps: Arc<Tensor>,
    /// Per-channel exponents `[C]`, each >= 1.
    pub p: Arc<Tensor>,
}

impl Ggem {
    pub(crate) fn eps(&self) -> f32 {
        *self.eps.try_as_plain_ram().and_then(|v| v.to_scalar::<f32>()).expect("eps is an f32 scalar")
    }

    /// One exponent per channel.
    pub(crate) fn exponents(&self) -> &[f32] {
        self.p.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).expect("p is an f32 vector")
    }
}

/// Evaluates GGeM pooling on the CPU. `x` is `[b, n, c]` row-major, `p` one
/// exponent per channel, `out` is `[b, c]`. Accumulates in f32; `f16` input
/// is widened on load.
///
/// Each 64-channel tile is read twice from cache: first for the per-channel
/// maximum `m`, then for `sum_n (x / m) ^ p`, so every term is at most 1 and
/// `x ^ p` cannot overflow even for x = 60000, p = 8. The result is
/// `m * (sum / n) ^ (1 / p)`; powers are `exp2(p * log2(x))`.
pub fn ggem_cpu<T>(x: &[T], b: usize, n: usize, c: usize, p: &[f32], eps: f32, out: &mut [f32])
where
    T: Copy,
    f32: From<T>,
{
    assert_eq!(x.len(), b * n * c, "x is not [b, n, c]");
    assert_eq!(p.len(), c, "one exponent per channel");
    assert_eq!(out.len(), b * c, "out is not [b, c]");
    assert!(n > 0 && eps > 0.0, "need tokens and a positive eps");
    let inv_n = 1.0 / n as f32;
    for bi in 0..b {
        let image = &x[bi * n * c..(bi + 1) * n * c];
        for c0 in (0..c).step_by(TILE) {
            let t = TILE.min(c - c0);
            let mut max = [eps; TILE];
            for row in image.chunks_exact(c) {
                for (m, &v) in max[..t].iter_mut().zip(&row[c0..c0 + t]) {
                    *m = m.max(f32::from(v));
                }
            }
            let mut inv_max = [0.0f32; TILE];
            for (i, m) in inv_max[..t].iter_mut().zip(&max[..t]) {
                *i = 1.0 / m;
            }
            let p = &p[c0..c0 + t];
            let mut sum = [0.0f32; TILE];
            for row in image.chunks_exact(c) {
                for j in 0..t {
                    let v = f32::from(row[c0 + j]).max(eps) * inv_max[j];
                    sum[j] += (p[j] * v.log2()).exp2();
                }
            }
            for j in 0..t {
                out[bi * c + c0 + j] = max[j] * ((sum[j] * inv_n).log2() / p[j]).exp2();
            }
        }
    }
}

impl Op for Ggem {
    fn name(&self) -> StaticName {
        "Ggem".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("groups: {}, eps: {:?}", self.groups, self.eps())])
    }

    op_as_typed_op!();
}

impl EvalOp for Ggem {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let &[b, n, c] = x.shape() else { bail!("Ggem expects [B, N, C] but got {:?}", x.shape()) };
        let (p, eps) = (self.exponents(), self.eps());
        ensure!(p.len() == c, "Ggem has {} exponents for {c} channels", p.len());
        let mut out = vec![0.0f32; b * c];
        let view = x.try_as_plain_ram()?;
        let y = match x.datum_type() {
            DatumType::F32 => {
                ggem_cpu(view.as_slice::<f32>()?, b, n, c, p, eps, &mut out);
                Tensor::from_shape(&[b, c], &out)?
            }
            DatumType::F16 => {
                ggem_cpu(view.as_slice::<f16>()?, b, n, c, p, eps, &mut out);
                let half: Vec<f16> = out.iter().map(|&v| f16::from_f32(v)).collect();
                Tensor::from_shape(&[b, c], &half)?
            }
            dt => bail!("Ggem supports f32 and f16 input, not {dt:?}"),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

/// The fact of GGeM's output, `[B, C]`, for tokens `x: [B, N, C]`.
pub fn pooled_fact(x: &TypedFact) -> TractResult<TypedFact> {
    ensure!(x.rank() == 3, "Ggem expects [B, N, C]");
    Ok(x.datum_type.fact([x.shape[0].clone(), x.shape[2].clone()]))
}

impl TypedOp for Ggem {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(pooled_fact(inputs[0])?))
    }

    as_op!();
}

/// The values of a constant that is one per channel (shape `[.., 1, C]`).
fn per_channel(k: &Tensor, c: usize) -> Option<Vec<f32>> {
    let rank = k.rank();
    let shaped = k.len() == c && k.shape().iter().take(rank.saturating_sub(1)).all(|&d| d == 1);
    let k = k.cast_to::<f32>().ok()?;
    let values = k.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec();
    shaped.then_some(values)
}

/// The constant feeding `outlet`, if tract knows it.
fn konst(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(outlet).ok()?.konst.clone()
}

fn is_bin<M: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<M>())
}

/// Smallest number of contiguous groups over which `p` is constant.
fn groups_of(p: &[f32]) -> usize {
    let c = p.len();
    (1..=c)
        .filter(|&g| c.is_multiple_of(g))
        .find(|&g| p.chunks(c / g).all(|chunk| chunk.iter().all(|&v| v == chunk[0])))
        .unwrap_or(c)
}

/// Why a candidate (a sum over tokens of a power) is not a GGeM head.
type Miss = &'static str;

/// Whether `node` is a sum over the token axis of a power: where a GGeM head
/// would be. Anything else (LayerNorm's reductions, say) is not worth a log line.
fn is_candidate(model: &TypedModel, node: &TypedNode) -> bool {
    let sums_tokens =
        node.op_as::<Reduce>().is_some_and(|r| r.reducer == Reducer::Sum && r.axes.as_slice() == [1]);
    sums_tokens && is_bin::<Pow>(model.node(node.inputs[0].node))
}

/// Tries to match the GGeM chain around the candidate `node` (see
/// [`is_candidate`]). Returns the patch, or why the candidate was left alone.
fn match_at(model: &TypedModel, node: &TypedNode) -> TractResult<Result<TypedModelPatch, Miss>> {
    let fact = model.outlet_fact(node.inputs[0])?;
    let Some(c) = fact.shape.as_concrete().filter(|s| s.len() == 3).map(|s| s[2]) else {
        return Ok(Err("input is not [B, N, C] with a known C"));
    };
    let pow = model.node(node.inputs[0].node);
    if pow.outputs[0].successors.len() != 1 {
        return Ok(Err("the power has several users"));
    }
    let Some(p) = konst(model, pow.inputs[1]) else {
        return Ok(Err("exponents are not constant"));
    };
    let Some(p) = per_channel(&p, c) else {
        return Ok(Err("exponents are not one per channel"));
    };
    if p.iter().any(|&v| !(v.is_finite() && v >= 1.0)) {
        return Ok(Err("an exponent is below 1"));
    }
    let clamp = model.node(pow.inputs[0].node);
    if !is_bin::<Max>(clamp) || clamp.outputs[0].successors.len() != 1 {
        return Ok(Err("power input is not clamped by a max"));
    }
    let k = if konst(model, clamp.inputs[1]).is_some() { 1 } else { 0 };
    let Some(eps) = konst(model, clamp.inputs[k]).filter(|e| e.len() == 1) else {
        return Ok(Err("clamp floor is not a constant scalar"));
    };
    let eps = eps.cast_to_scalar::<f32>()?;
    if !(eps > 0.0 && eps.is_finite()) {
        return Ok(Err("clamp floor is not positive"));
    }
    let Some(norm) = model.single_succ(node.id)? else {
        return Ok(Err("sum has several users"));
    };
    let n = fact.shape[1].to_i64().ok();
    let mean_factor = konst(model, norm.inputs[1]).and_then(|k| k.cast_to_scalar::<f32>().ok());
    let is_mean = match (n, mean_factor) {
        (Some(n), Some(f)) if is_bin::<Div>(norm) => f == n as f32,
        (Some(n), Some(f)) if is_bin::<Mul>(norm) => (f * n as f32 - 1.0).abs() < 1e-6,
        _ => false,
    };
    if !is_mean || norm.inputs[0] != OutletId::new(node.id, 0) {
        return Ok(Err("sum is not divided by the token count"));
    }
    let Some(rm) = model.single_succ(norm.id)? else {
        return Ok(Err("mean has several users"));
    };
    if !matches!(rm.op_as::<AxisOp>(), Some(AxisOp::Rm(1))) {
        return Ok(Err("mean keeps the token axis"));
    }
    let Some(root) = model.single_succ(rm.id)? else {
        return Ok(Err("mean has several users"));
    };
    if !is_bin::<Pow>(root) || root.inputs[0] != OutletId::new(rm.id, 0) {
        return Ok(Err("mean is not raised to a power"));
    }
    let Some(inv_p) = konst(model, root.inputs[1]).and_then(|k| per_channel(&k, c)) else {
        return Ok(Err("root exponents are not constant per channel"));
    };
    if p.iter().zip(&inv_p).any(|(p, q)| (p * q - 1.0).abs() > 1e-5) {
        return Ok(Err("root exponents are not the reciprocals of the powers"));
    }
    let op = Ggem { groups: groups_of(&p), eps: rctensor0(eps), p: Arc::new(tensor1(&p)) };
    let mut patch = TypedModelPatch::new(format!("fuse GGeM at {}", node.name));
    let tokens = patch.tap_model(model, clamp.inputs[1 - k])?;
    let pooled = patch.wire_node(format!("{}.ggem", node.name), op, &[tokens])?[0];
    patch.shunt_outside(model, root.id.into(), pooled)?;
    Ok(Ok(patch))
}

/// Replaces every GGeM head in `model` (typed, constants propagated) by one
/// [`Ggem`] op. Returns how many were fused; near misses are logged at debug
/// level and left as they are.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    model.prop_consts()?;
    let mut fused = 0;
    'rounds: loop {
        let mut misses = Vec::new();
        for id in model.eval_order()? {
            let node = model.node(id);
            if !is_candidate(model, node) {
                continue;
            }
            match match_at(model, node)? {
                Ok(patch) => {
                    patch.apply(model)?;
                    fused += 1;
                    continue 'rounds;
                }
                Err(why) => misses.push((node.name.clone(), why)),
            }
        }
        for (name, why) in misses {
            log::debug!("ggem: {name} left alone: {why}");
        }
        break;
    }
    if fused > 0 {
        *model = model.clone().into_compact()?;
    }
    Ok(fused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevit_kernels::testing::XorShift;
    use edgevit_kernels::{ggem_reference, Tolerance};
    use tract_onnx::prelude::f16;

    /// One parity case: shape, per-group exponents, and the input.
    struct Case {
        b: usize,
        n: usize,
        c: usize,
        p: Vec<f32>,
        x: Vec<f32>,
    }

    fn cases() -> Vec<Case> {
        let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut case = |b: usize, n: usize, c: usize, p: Vec<f32>, draw: &dyn Fn(f32, usize) -> f32| {
            let x = (0..b * n * c).map(|i| draw(rng.uniform(0.0, 1.0), i % c)).collect();
            Case { b, n, c, p, x }
        };
        let normal = |u: f32, _: usize| u * 6.0 - 2.0;
        vec![
            case(1, 196, 192, vec![2.0, 3.0, 4.0], &normal),
            case(1, 197, 384, vec![1.0, 1.5, 2.5, 3.0, 6.0, 8.0], &normal),
            case(2, 16, 64, vec![3.68, 3.72, 3.86, 3.55], &normal),
            case(3, 5, 16, vec![1.0, 8.0], &normal),
            // Up to 60000 with p = 8: x^p alone would overflow f32.
            case(1, 49, 64, vec![8.0, 1.0, 5.0, 7.5], &|u, _| u * 60000.0),
            // Negatives everywhere, and channels 0..8 entirely below eps.
            case(2, 33, 32, vec![2.0, 3.0], &|u, ch| if ch < 8 { -u - 1e-3 } else { u * 4.0 - 3.0 }),
        ]
    }

    /// One test body for every input type: `ggem_cpu` on `x` against the f64
    /// reference on the values `x` holds once widened to f32.
    fn matches_reference<T: Copy>(case: &Case, convert: impl Fn(f32) -> T)
    where
        f32: From<T>,
    {
        let Case { b, n, c, ref p, ref x } = *case;
        let input: Vec<T> = x.iter().map(|&v| convert(v)).collect();
        let widened: Vec<f32> = input.iter().map(|&v| f32::from(v)).collect();
        let per_channel: Vec<f32> = p.iter().flat_map(|&v| std::iter::repeat_n(v, c / p.len())).collect();
        let mut out = vec![f32::NAN; b * c];
        ggem_cpu(&input, b, n, c, &per_channel, 1e-6, &mut out);
        let expected = ggem_reference(&widened, b, n, c, p, 1e-6).unwrap();
        let actual: Vec<f64> = out.iter().map(|&v| v as f64).collect();
        if let Err(e) = Tolerance::Close.check(&actual, &expected, &[b, c]) {
            panic!("{} input, p {p:?}: {e}", std::any::type_name::<T>());
        }
    }

    #[test]
    fn cpu_kernel_matches_the_f64_reference() {
        for case in cases() {
            matches_reference(&case, |v| v);
        }
    }

    #[test]
    fn cpu_kernel_accepts_f16_input() {
        // Every case fits f16 (largest finite value 65504).
        for case in cases() {
            matches_reference(&case, f16::from_f32);
        }
    }

    #[test]
    fn groups_are_the_coarsest_constant_split() {
        assert_eq!(groups_of(&[2.0, 2.0, 3.0, 3.0]), 2);
        assert_eq!(groups_of(&[2.0; 8]), 1);
        assert_eq!(groups_of(&[1.0, 2.0, 3.0]), 3);
    }
}
