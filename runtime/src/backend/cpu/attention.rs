//! Attention as one op: `softmax(Q K^T) V` for each head, the heads (and
//! images) and blocks of query rows in parallel.
//!
//! Exporters write attention as two batched products around a softmax
//! (`MatMul`, `Softmax`, `MatMul`), which tract plans as two products that
//! run the heads one after another, each packing its operands first.
//! [`Attention`] packs each head's `K^T` and `V` once into the panels of the
//! [`linear`] kernels and then, for a block of query rows, computes the
//! scores, their softmax and the product with `V` with the block's scores in
//! cache. Q, K and V are read where they are, in whatever axis order the
//! model left them (the slices of one qkv product, for a timm ViT): the op
//! keeps each tensor's strides.
//!
//! [`replace`] finds the `EinSum`, `Softmax`, `EinSum` chain in a decluttered
//! model, and reads Q, K and V through the slices and axis moves that split
//! them out of one tensor and order them by head, and through the scale the
//! model multiplies Q or K by (folded into the packing of K), and writes its
//! output in the layout of the axis move that follows it: those ops and
//! their copies go too.

use std::sync::Arc;

use std::sync::OnceLock;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Gather, Slice};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Mul;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

use super::linear::{linear_here, Activation, Kernel, PackedWeight};
use super::softmax::softmax_rows;
use super::{pool, sole_successor, splice};

/// Query rows a task takes at a time: their scores (`ROW_BLOCK x N`) stay in
/// L2 between the two products.
const ROW_BLOCK: usize = 48;

/// An axis of the product, with its stride (in values) in each tensor it
/// appears in; 0 where it does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Axis {
    dim: usize,
    q: usize,
    k: usize,
    v: usize,
    out: usize,
}

/// The layout of one attention: `out[b, i, e] = sum_j softmax_j(sum_d q[b, i,
/// d] k[b, j, d]) v[b, j, e]`, each index an [`Axis`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Layout {
    /// Heads and images, in any number of axes.
    batch: Vec<Axis>,
    /// Query rows `i`.
    rows: Axis,
    /// Keys `j`.
    keys: Axis,
    /// The summed feature `d` of Q and K.
    depth: Axis,
    /// The feature `e` of V and of the output.
    features: Axis,
    /// Where Q, K and V start in their tensors.
    start: [usize; 3],
    out_shape: TVec<usize>,
}

impl Layout {
    fn batch_count(&self) -> usize {
        self.batch.iter().map(|a| a.dim).product()
    }

    /// The offsets of batch element `b` in q, k, v and out.
    fn offsets(&self, mut b: usize) -> [usize; 4] {
        let [q, k, v] = self.start;
        let mut at = [q, k, v, 0];
        for axis in self.batch.iter().rev() {
            let i = b % axis.dim;
            b /= axis.dim;
            for (at, stride) in at.iter_mut().zip([axis.q, axis.k, axis.v, axis.out]) {
                *at += i * stride;
            }
        }
        at
    }
}

/// Attention over Q, K and V (see the module's doc).
#[derive(Clone, Debug)]
pub struct Attention {
    layout: Arc<Layout>,
    /// What the scores are multiplied by before the softmax.
    scale: f32,
    kernel: Kernel,
}

impl PartialEq for Attention {
    fn eq(&self, other: &Self) -> bool {
        self.layout == other.layout
            && self.scale.to_bits() == other.scale.to_bits()
            && self.kernel == other.kernel
    }
}

impl Eq for Attention {}

impl Attention {
    /// Computes `out` (the output's values, laid out as `out_shape`).
    fn compute(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
        let l = &*self.layout;
        let (m, n, d, e) = (l.rows.dim, l.keys.dim, l.depth.dim, l.features.dim);
        let heads = l.batch_count();
        // Each head's K^T (d x n) and V (n x e), packed: from rows when their
        // values are contiguous (as from one qkv product), else one by one.
        let pack = |b: usize| {
            let [_, ko, vo, _] = l.offsets(b);
            let kt = if l.depth.k == 1 {
                PackedWeight::from_columns(self.kernel, d, n, self.scale, |j| &k[ko + j * l.keys.k..][..d])
            } else {
                PackedWeight::from_fn(self.kernel, d, n, |p, j| {
                    self.scale * k[ko + p * l.depth.k + j * l.keys.k]
                })
            };
            let vp = if l.features.v == 1 {
                PackedWeight::from_rows(self.kernel, n, e, |j| &v[vo + j * l.keys.v..][..e])
            } else {
                PackedWeight::from_fn(self.kernel, n, e, |j, f| v[vo + j * l.keys.v + f * l.features.v])
            };
            (kt, vp)
        };
        let blocks = m.div_ceil(ROW_BLOCK);
        let out_ptr = SharedOut(out.as_mut_ptr());
        let packed: Vec<OnceLock<(PackedWeight, PackedWeight)>> =
            (0..heads).map(|_| OnceLock::new()).collect();
        pool::for_each(heads, |b| _ = packed[b].set(pack(b)));
        pool::for_each(heads * blocks, |t| {
            let (b, block) = (t / blocks, t % blocks);
            let rows = block * ROW_BLOCK..((block + 1) * ROW_BLOCK).min(m);
            let [qo, _, _, oo] = l.offsets(b);
            let mut x = vec![0.0f32; rows.len() * d];
            for (r, row) in rows.clone().zip(x.chunks_exact_mut(d)) {
                let at = qo + r * l.rows.q;
                if l.depth.q == 1 {
                    row.copy_from_slice(&q[at..at + d]);
                } else {
                    row.iter_mut().enumerate().for_each(|(p, x)| *x = q[at + p * l.depth.q]);
                }
            }
            let mut scores = vec![0.0f32; rows.len() * n];
            let (kt, vp) = packed[b].get().expect("every head is packed by the first pass");
            linear_here(&x, kt, Activation::None, &mut scores);
            softmax_rows(&mut scores, n);
            let mut y = vec![0.0f32; rows.len() * e];
            linear_here(&scores, vp, Activation::None, &mut y);
            for (r, row) in rows.zip(y.chunks_exact(e)) {
                let at = oo + r * l.rows.out;
                // SAFETY: batch element b, row r and its features are this
                // task's alone (tasks split batch elements and rows), and
                // inside `out`, which the layout's strides address.
                unsafe {
                    if l.features.out == 1 {
                        std::ptr::copy_nonoverlapping(row.as_ptr(), out_ptr.at(at), e);
                    } else {
                        row.iter().enumerate().for_each(|(f, &y)| *out_ptr.at(at + f * l.features.out) = y);
                    }
                }
            }
        });
    }
}

/// The output's values, written by tasks at disjoint offsets.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: tasks write disjoint elements (see `Attention::compute`).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `i` is inside the output and no other thread writes it.
    unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(i) }
    }
}

impl Op for Attention {
    fn name(&self) -> StaticName {
        "Attention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let l = &self.layout;
        Ok(vec![format!(
            "{} heads, {} x {} queries x keys, depth {}, kernel {}",
            l.batch_count(),
            l.rows.dim,
            l.keys.dim,
            l.depth.dim,
            self.kernel.name()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (q, k, v) = args_3!(inputs);
        let (q, k, v) = (q.try_as_plain_ram()?, k.try_as_plain_ram()?, v.try_as_plain_ram()?);
        let mut out = Tensor::zero::<f32>(&self.layout.out_shape)?;
        {
            let mut plain = out.try_as_plain_ram_mut()?;
            self.compute(
                q.as_slice::<f32>()?,
                k.as_slice::<f32>()?,
                v.as_slice::<f32>()?,
                plain.as_slice_mut::<f32>()?,
            );
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.iter().all(|f| f.datum_type == f32::datum_type()), "Attention takes f32");
        Ok(tvec!(f32::fact(&*self.layout.out_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let l = &self.layout;
        let macs = l.batch_count() * l.rows.dim * l.keys.dim * (l.depth.dim + l.features.dim);
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.to_dim())))
    }

    as_op!();
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// A batched product's axes by role: each axis of size > 1 as (its letter,
/// its dim, its position in a, b and the output).
struct Roles {
    batch: Vec<(char, usize, [Option<usize>; 3])>,
    rows: (usize, [Option<usize>; 3]),
    cols: (usize, [Option<usize>; 3]),
    sum: (usize, [Option<usize>; 3]),
}

/// The axes of an f32 two-input `EinSum` with concrete shapes, by role, when
/// it has exactly one row, one column and one summed axis of size > 1.
fn roles(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Roles>> {
    let Some(op) = node.op_as::<EinSum>() else { return Ok(None) };
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let facts =
        [model.outlet_fact(node.inputs[0])?, model.outlet_fact(node.inputs[1])?, &node.outputs[0].fact];
    if facts.iter().any(|f| f.datum_type != f32::datum_type() || !f.is_plain() || f.konst.is_some()) {
        return Ok(None);
    }
    let mut shapes: [Vec<usize>; 3] = Default::default();
    for (shape, fact) in shapes.iter_mut().zip(facts) {
        let Some(s) = fact.shape.as_concrete() else { return Ok(None) };
        *shape = s.to_vec();
    }
    let (inputs, outputs) = op.axes.to_strs();
    let letters: [Vec<char>; 3] =
        [inputs[0].chars().collect(), inputs[1].chars().collect(), outputs[0].chars().collect()];
    if letters.iter().zip(&shapes).any(|(l, s)| l.len() != s.len()) {
        return Ok(None);
    }
    let mut all: Vec<char> = letters.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    let (mut batch, mut rows, mut cols, mut sum) = (vec![], vec![], vec![], vec![]);
    for a in all {
        let at: [Option<usize>; 3] = std::array::from_fn(|t| letters[t].iter().position(|&b| b == a));
        let dim = (0..3).find_map(|t| at[t].map(|p| shapes[t][p])).unwrap_or(1);
        if dim == 1 {
            continue;
        }
        match at.map(|p| p.is_some()) {
            [true, true, true] => batch.push((a, dim, at)),
            [true, false, true] => rows.push((dim, at)),
            [false, true, true] => cols.push((dim, at)),
            [true, true, false] => sum.push((dim, at)),
            _ => return Ok(None),
        }
    }
    if rows.len() != 1 || cols.len() != 1 || sum.len() != 1 {
        return Ok(None);
    }
    Ok(Some(Roles { batch, rows: rows[0], cols: cols[0], sum: sum[0] }))
}

/// Where an input of the products really comes from: the tensor below the
/// views (slices, axis moves, axes of size 1 added or removed and, for Q
/// and K, multiplications by a scalar constant) that the exporter put in
/// between, with the view's strides in it, per axis of the input, its start
/// and the scale.
struct Source {
    outlet: OutletId,
    strides: Vec<usize>,
    start: usize,
    scale: f32,
}

/// The scalar constant `node` multiplies `x` by, when it is such a
/// multiplication keeping `x`'s shape.
fn scalar_factor(model: &TypedModel, node: &TypedNode, x: OutletId) -> TractResult<Option<f32>> {
    if !node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<Mul>()) || node.inputs.len() != 2 {
        return Ok(None);
    }
    let Some(&other) = node.inputs.iter().find(|&&i| i != x) else { return Ok(None) };
    let konst = model.outlet_fact(other)?.konst.clone();
    let Some(k) = konst.filter(|k| k.datum_type() == f32::datum_type() && k.len() == 1) else {
        return Ok(None);
    };
    let keeps_shape = node.inputs.contains(&x) && model.outlet_fact(x)?.shape == node.outputs[0].fact.shape;
    keeps_shape.then(|| k.cast_to_scalar::<f32>()).transpose()
}

fn source(model: &TypedModel, outlet: OutletId, scaled: bool) -> TractResult<Source> {
    let node = model.node(outlet.node);
    let below = |model: &TypedModel| source(model, node.inputs[0], scaled);
    if scaled && node.op_as::<TypedBinOp>().is_some() {
        for &x in &node.inputs {
            if let Some(scale) = scalar_factor(model, node, x)? {
                let mut inner = source(model, x, scaled)?;
                inner.scale *= scale;
                return Ok(inner);
            }
        }
    }
    if let Some(op) = node.op_as::<AxisOp>() {
        match *op {
            AxisOp::Move(from, to) => {
                let mut inner = below(model)?;
                let moved = inner.strides.remove(from);
                inner.strides.insert(to, moved);
                return Ok(inner);
            }
            AxisOp::Rm(axis) => {
                let mut inner = below(model)?;
                inner.strides.remove(axis);
                return Ok(inner);
            }
            AxisOp::Add(axis) => {
                let mut inner = below(model)?;
                inner.strides.insert(axis, 0);
                return Ok(inner);
            }
            AxisOp::Reshape(..) => {}
        }
    }
    if let Some(slice) = node.op_as::<Slice>() {
        if let Ok(start) = slice.start.to_usize() {
            let mut inner = below(model)?;
            inner.start += start * inner.strides[slice.axis];
            return Ok(inner);
        }
    }
    // One index taken on an axis (q, k, v = qkv[0], qkv[1], qkv[2]).
    if let Some(gather) = node.op_as::<Gather>() {
        let index = model.outlet_fact(node.inputs[1])?.konst.clone();
        if let Some(index) = index.filter(|i| i.rank() == 0) {
            if let Ok(index) = index.cast_to_scalar::<i64>() {
                let mut inner = below(model)?;
                let dim = model.outlet_fact(node.inputs[0])?.shape[gather.axis].to_i64()?;
                let index = if index < 0 { index + dim } else { index };
                ensure!((0..dim).contains(&index), "gather index {index} out of 0..{dim}");
                inner.start += index as usize * inner.strides.remove(gather.axis);
                return Ok(inner);
            }
        }
    }
    let fact = model.outlet_fact(outlet)?;
    let shape = fact.shape.as_concrete().context("a concrete shape")?;
    ensure!(fact.datum_type == f32::datum_type() && fact.is_plain(), "attention reads f32 in memory");
    Ok(Source { outlet, strides: strides(shape), start: 0, scale: 1.0 })
}

/// Where the output goes: the product's output, or the axis move after it
/// (timm's transpose back to tokens x heads), written in place at its strides.
fn destination(model: &TypedModel, product: &TypedNode) -> TractResult<(usize, Vec<usize>, TVec<usize>)> {
    let shape = product.outputs[0].fact.shape.as_concrete().context("a concrete shape")?;
    if let Some(next) = sole_successor(model, product) {
        if let Some(&AxisOp::Move(from, to)) = next.op_as::<AxisOp>() {
            let moved = next.outputs[0].fact.shape.as_concrete().context("a concrete shape")?;
            // Axis j of the moved output is axis order[j] of the product's.
            let mut order: Vec<usize> = (0..shape.len()).collect();
            let axis = order.remove(from);
            order.insert(to, axis);
            let mut out = vec![0; shape.len()];
            for (j, &stride) in strides(moved).iter().enumerate() {
                out[order[j]] = stride;
            }
            return Ok((next.id, out, moved.into()));
        }
    }
    Ok((product.id, strides(shape), shape.into()))
}

/// The attention that starts at `scores` (the Q K^T product), when the
/// chain is scores -> softmax over the keys -> product with V over the keys.
/// Returns the op, its inputs and the node whose output it replaces.
fn attention_at(
    model: &TypedModel,
    scores: &TypedNode,
    kernel: Kernel,
) -> TractResult<Option<(Attention, [OutletId; 3], usize)>> {
    let Some(qk) = roles(model, scores)? else { return Ok(None) };
    let Some(mut softmax) = sole_successor(model, scores) else { return Ok(None) };
    // A scale of the scores before their softmax (instead of Q's or K's).
    let mut score_scale = 1.0;
    if let Some(scale) = scalar_factor(model, softmax, OutletId::new(scores.id, 0))? {
        score_scale = scale;
        let Some(next) = sole_successor(model, softmax) else { return Ok(None) };
        softmax = next;
    }
    let Some(op) = softmax.op_as::<Softmax>() else { return Ok(None) };
    let keys_at = qk.cols.1[2].expect("a column axis is in the output");
    if op.kind != SoftmaxKind::Softmax || op.quant_output_dt.is_some() || op.axes.as_slice() != [keys_at] {
        return Ok(None);
    }
    let rows_at = qk.rows.1[2].expect("a row axis is in the output");
    let Some(mut pv_node) = sole_successor(model, softmax) else { return Ok(None) };
    // tract pushes a slice of the output's tokens (a mean over the patches
    // without the class token) up to the probabilities: then only those
    // query rows are computed.
    let mut first_row = 0;
    if let Some(slice) = pv_node.op_as::<Slice>() {
        let (Ok(start), true) = (slice.start.to_usize(), slice.axis == rows_at) else { return Ok(None) };
        first_row = start;
        let Some(next) = sole_successor(model, pv_node) else { return Ok(None) };
        pv_node = next;
    }
    let Some(pv) = roles(model, pv_node)? else { return Ok(None) };
    // The second product takes the probabilities as its first input, sums
    // over the keys, keeps the query rows and the batch axes where the
    // scores have them.
    let probabilities = if first_row > 0 { pv_node.inputs[0].node } else { softmax.id };
    if pv_node.inputs[0] != OutletId::new(probabilities, 0)
        || pv.sum.1[0] != Some(keys_at)
        || pv.rows.1[0] != Some(rows_at)
        || pv.batch.len() != qk.batch.len()
        || first_row + pv.rows.0 > qk.rows.0
    {
        return Ok(None);
    }
    let mut q = source(model, scores.inputs[0], true)?;
    q.start += first_row * qk.rows.1[0].map_or(0, |p| q.strides[p]);
    let k = source(model, scores.inputs[1], true)?;
    let v = source(model, pv_node.inputs[1], false)?;
    let (last, os, out_shape) = destination(model, pv_node)?;
    let [qs, ks, vs] = [&q.strides, &k.strides, &v.strides];
    let stride = |strides: &[usize], at: Option<usize>| at.map_or(0, |p| strides[p]);
    let mut batch = Vec::new();
    for &(_, dim, at) in &qk.batch {
        // The same batch axis of the scores in the second product.
        let Some(&(_, pv_dim, pv_at)) = pv.batch.iter().find(|(_, _, b)| b[0] == at[2]) else {
            return Ok(None);
        };
        if pv_dim != dim {
            return Ok(None);
        }
        batch.push(Axis {
            dim,
            q: stride(qs, at[0]),
            k: stride(ks, at[1]),
            v: stride(vs, pv_at[1]),
            out: stride(&os, pv_at[2]),
        });
    }
    let layout = Layout {
        batch,
        rows: Axis {
            dim: pv.rows.0,
            q: stride(qs, qk.rows.1[0]),
            k: 0,
            v: 0,
            out: stride(&os, pv.rows.1[2]),
        },
        keys: Axis { dim: qk.cols.0, q: 0, k: stride(ks, qk.cols.1[1]), v: stride(vs, pv.sum.1[1]), out: 0 },
        depth: Axis { dim: qk.sum.0, q: stride(qs, qk.sum.1[0]), k: stride(ks, qk.sum.1[1]), v: 0, out: 0 },
        features: Axis {
            dim: pv.cols.0,
            q: 0,
            k: 0,
            v: stride(vs, pv.cols.1[1]),
            out: stride(&os, pv.cols.1[2]),
        },
        start: [q.start, k.start, v.start],
        out_shape,
    };
    if layout.keys.dim != pv.sum.0 {
        return Ok(None);
    }
    let op = Attention { layout: Arc::new(layout), scale: q.scale * k.scale * score_scale, kernel };
    Ok(Some((op, [q.outlet, k.outlet, v.outlet], last)))
}

/// Replaces each attention (see the module's doc) in a decluttered model by
/// an [`Attention`] on `kernel`; returns how many.
pub fn replace(model: &mut TypedModel, kernel: Kernel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some((op, sources, last)) = attention_at(model, model.node(id), kernel)? else { continue };
        splice(model, &sources, op, last)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevit_kernels::testing::XorShift;

    /// `softmax(q k^T) v` of one head in f64: q m x d, k n x d, v n x e.
    fn reference(q: &[f32], k: &[f32], v: &[f32], m: usize, n: usize, d: usize, e: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * e];
        for i in 0..m {
            let s: Vec<f64> =
                (0..n).map(|j| (0..d).map(|p| q[i * d + p] as f64 * k[j * d + p] as f64).sum()).collect();
            let max = s.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let w: Vec<f64> = s.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = w.iter().sum();
            for f in 0..e {
                out[i * e + f] = (0..n).map(|j| w[j] / total * v[j * e + f] as f64).sum();
            }
        }
        out
    }

    /// A layout of `heads` heads of contiguous q (m x d), k (n x d), v
    /// (n x e) and out (m x e), one after another.
    fn contiguous(heads: usize, m: usize, n: usize, d: usize, e: usize) -> Layout {
        Layout {
            batch: vec![Axis { dim: heads, q: m * d, k: n * d, v: n * e, out: m * e }],
            rows: Axis { dim: m, q: d, k: 0, v: 0, out: e },
            keys: Axis { dim: n, q: 0, k: d, v: e, out: 0 },
            depth: Axis { dim: d, q: 1, k: 1, v: 0, out: 0 },
            features: Axis { dim: e, q: 0, k: 0, v: 1, out: 1 },
            start: [0; 3],
            out_shape: tvec![heads, m, e],
        }
    }

    /// Q as `[m, heads, d]` (query-major, as the slices of a qkv product),
    /// K and V transposed (`[heads, d, n]` and `[heads, e, n]`), the output
    /// `[m, heads, e]`: every value through a stride other than 1 but Q's.
    fn strided(heads: usize, m: usize, n: usize, d: usize, e: usize) -> Layout {
        Layout {
            batch: vec![Axis { dim: heads, q: d, k: d * n, v: e * n, out: e }],
            rows: Axis { dim: m, q: heads * d, k: 0, v: 0, out: heads * e },
            keys: Axis { dim: n, q: 0, k: 1, v: 1, out: 0 },
            depth: Axis { dim: d, q: 1, k: n, v: 0, out: 0 },
            features: Axis { dim: e, q: 0, k: 0, v: n, out: 1 },
            start: [0; 3],
            out_shape: tvec![m, heads, e],
        }
    }

    #[test]
    fn strided_layouts_read_and_write_the_same_values() {
        let (heads, m, n, d, e) = (3, 19, 23, 8, 5);
        let mut rng = XorShift::new(17);
        let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect() };
        let (q, k, v) = (draw(heads * m * d), draw(heads * n * d), draw(heads * n * e));
        let kernel = Kernel::detect();
        let mut want = vec![0.0; heads * m * e];
        Attention { layout: Arc::new(contiguous(heads, m, n, d, e)), scale: 0.5, kernel }
            .compute(&q, &k, &v, &mut want);
        // The same values in the strided layout.
        let (mut qs, mut ks, mut vs) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        for h in 0..heads {
            for i in 0..m {
                qs[(i * heads + h) * d..][..d].copy_from_slice(&q[(h * m + i) * d..][..d]);
            }
            for j in 0..n {
                for p in 0..d {
                    ks[(h * d + p) * n + j] = k[(h * n + j) * d + p];
                }
                for f in 0..e {
                    vs[(h * e + f) * n + j] = v[(h * n + j) * e + f];
                }
            }
        }
        let mut got = vec![0.0; heads * m * e];
        Attention { layout: Arc::new(strided(heads, m, n, d, e)), scale: 0.5, kernel }
            .compute(&qs, &ks, &vs, &mut got);
        for h in 0..heads {
            for i in 0..m {
                assert_eq!(
                    &got[(i * heads + h) * e..][..e],
                    &want[(h * m + i) * e..][..e],
                    "head {h} row {i}"
                );
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_reference_per_head() {
        let pool = Arc::new(pool::Pool::new(2).unwrap());
        for kernel in Kernel::available() {
            for (heads, m, n, d, e) in
                [(1, 1, 1, 1, 1), (3, 197, 197, 64, 64), (2, 5, 9, 7, 3), (24, 50, 50, 16, 8)]
            {
                let mut rng = XorShift::new(3);
                let mut draw =
                    |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect() };
                let (q, k, v) = (draw(heads * m * d), draw(heads * n * d), draw(heads * n * e));
                let op = Attention { layout: Arc::new(contiguous(heads, m, n, d, e)), scale: 1.0, kernel };
                for threads in [1, 2] {
                    let mut out = vec![f32::NAN; heads * m * e];
                    if threads == 2 {
                        pool.scope(|| op.compute(&q, &k, &v, &mut out));
                    } else {
                        op.compute(&q, &k, &v, &mut out);
                    }
                    for h in 0..heads {
                        let want = reference(
                            &q[h * m * d..][..m * d],
                            &k[h * n * d..][..n * d],
                            &v[h * n * e..][..n * e],
                            m,
                            n,
                            d,
                            e,
                        );
                        for (i, (&got, want)) in out[h * m * e..][..m * e].iter().zip(want).enumerate() {
                            // Weights sum to 1 and |v| < 1: the scores' f32 error
                            // (d terms < 1) moves each weight by at most that, relative.
                            let bound = 1e-5 + d as f64 * 2.4e-7;
                            assert!(
                                (got as f64 - want).abs() <= bound,
                                "{} {heads}x{m}x{n}x{d}x{e} head {h} [{}, {}]: {got} vs {want}",
                                kernel.name(),
                                i / e,
                                i % e
                            );
                        }
                    }
                }
            }
        }
    }
}
