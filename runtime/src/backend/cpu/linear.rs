//! Products with a constant weight, `y = x W + b`, with the GELU and the
//! residual add that follow, as one op of the CPU plan.
//!
//! tract packs both operands of every product at run time: the weight once,
//! and the activations before each product, with a transpose that it
//! vectorizes only on NEON (about a sixth of a ViT-Ti run on x86). [`Linear`]
//! packs the weight once, when the model loads, into panels of `NR` columns
//! (each `K` rows of `NR` values, the last panel zero-padded), and reads the
//! activations in place: the micro-kernel broadcasts one value of each of
//! `MR` rows and multiplies it into `NR` columns of the panel, so a tile of
//! `MR x NR` sums stays in registers for the whole of `K`. The bias is the
//! sums' starting value; GELU and the residual are applied to each tile
//! while it is still in L1. Work is split across the engine's threads
//! ([`pool`](super::pool)) in chunks of rows that stay in L2, times groups
//! of panels.
//!
//! Kernels, chosen when the model loads by what the CPU has ([`Kernel`]):
//! AVX-512F 6x64, AVX2 + FMA 6x16, NEON 8x12, and a portable 4x16 that the
//! compiler vectorizes for whatever the target has. Every one sums each
//! output in `K` order with fused multiply-adds (the portable one with
//! separate ones), so they agree with [`reference`] to the rounding of an
//! f32 dot product.
//!
//! [`replace`] swaps in a `Linear` for every f32 `EinSum` of the decluttered
//! model that is a product of an activation with a constant (qkv, proj,
//! fc1, fc2, the head; the patch embedding comes through
//! [`super::patch_embed`]), in any axis layout of the weight, as long as the
//! activation's rows are contiguous.
//!
//! This file holds the op and its rewrite; `pack` the packed weight,
//! `kernel` the micro-kernel and the split across threads, `x86` and `arm`
//! its registers, `epilogue` GELU and the residual.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::Add;
use tract_onnx::tract_core::ops::nn::GeluExact;

use super::qlinear::{int8_columns, qlinear, QKernel, QWeight};
use super::{sole_successor, splice};

#[cfg(target_arch = "aarch64")]
mod arm;
mod epilogue;
mod kernel;
mod pack;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use epilogue::Activation;
pub(super) use epilogue::Epilogue;
pub use kernel::{linear, linear_here};
pub(super) use kernel::{row_chunk, split_tiles};
pub(super) use pack::Aligned;
pub use pack::PackedWeight;

/// The micro-kernels, by instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// x86_64 AVX-512F: 6 rows x 64 columns (4 registers) per tile: 24
    /// accumulators, and per step 4 loads of the panel and 6 broadcasts,
    /// against 14 loads for 12 x 32, which measured 15 to 25% slower.
    Avx512,
    /// x86_64 AVX2 + FMA: 6 rows x 16 columns.
    Avx2,
    /// aarch64 NEON: 8 rows x 12 columns.
    Neon,
    /// Plain Rust the compiler vectorizes: 4 rows x 16 columns.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        Kernel::available().into_iter().next().unwrap_or(Kernel::Portable)
    }

    /// Every kernel this CPU runs, fastest first; the portable one is last.
    #[allow(clippy::vec_init_then_push)] // what is pushed first depends on the architecture
    pub fn available() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                kernels.push(Kernel::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        kernels.push(Kernel::Neon);
        kernels.push(Kernel::Portable);
        kernels
    }

    /// What `doctor` and `bench` print, e.g. `avx512f 6x64`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512f 6x64",
            Kernel::Avx2 => "avx2+fma 6x16",
            Kernel::Neon => "neon 8x12",
            Kernel::Portable => "portable 4x16",
        }
    }

    /// Rows of a tile.
    const fn mr(self) -> usize {
        match self {
            Kernel::Avx512 => 6,
            Kernel::Avx2 => 6,
            Kernel::Neon => 8,
            Kernel::Portable => 4,
        }
    }

    /// Columns of a tile, the width of a weight panel.
    const fn nr(self) -> usize {
        match self {
            Kernel::Avx512 => 64,
            Kernel::Avx2 | Kernel::Portable => 16,
            Kernel::Neon => 12,
        }
    }
}

/// The kernels products run on: f32, and int8 where this CPU has a fast one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    pub f32: Kernel,
    pub int8: Option<QKernel>,
}

impl Kernels {
    pub fn detect() -> Kernels {
        Kernels { f32: Kernel::detect(), int8: QKernel::detect() }
    }
}

/// A plan's products, by their weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Products {
    pub f32: usize,
    /// Int8 weights on an int8 kernel.
    pub int8: usize,
    /// Int8 weights run as f32 products, for want of a fast int8 kernel.
    pub int8_as_f32: usize,
}

impl std::ops::AddAssign for Products {
    fn add_assign(&mut self, other: Products) {
        self.f32 += other.f32;
        self.int8 += other.int8;
        self.int8_as_f32 += other.int8_as_f32;
    }
}

/// The weight of a [`Linear`]: f32 panels, or int8 ones (`QLinear`).
#[derive(Clone, Debug)]
pub enum Weight {
    F32(PackedWeight),
    Int8(QWeight),
}

impl Weight {
    /// The `K x N` weight (`K` rows of `N`) and its `bias`, packed: as int8
    /// when its values are int8 columns (a model quantized per output
    /// channel, see [`int8_columns`]) and `kernels` has an int8 kernel, as
    /// f32 otherwise; counted in `products`.
    pub fn pack(
        kernels: Kernels,
        weight: &[f32],
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
        products: &mut Products,
    ) -> Weight {
        match (int8_columns(weight, k, n), kernels.int8) {
            (Some((q, scale)), Some(kernel)) => {
                products.int8 += 1;
                Weight::Int8(QWeight::new(kernel, &q, &scale, k, n, bias))
            }
            (quantized, _) => {
                if quantized.is_some() {
                    products.int8_as_f32 += 1;
                } else {
                    products.f32 += 1;
                }
                Weight::F32(PackedWeight::new(kernels.f32, weight, k, n, bias))
            }
        }
    }

    /// `K x N`.
    fn dims(&self) -> (usize, usize) {
        match self {
            Weight::F32(w) => (w.k, w.n),
            Weight::Int8(w) => w.dims(),
        }
    }
}

/// A product of an activation with a constant weight (see the module's doc).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Arc<Weight>,
    activation: Activation,
    /// A second input, of the output's shape, is added last.
    residual: bool,
    /// The output's shape: the rows' axes, then the columns'.
    shape: TVec<usize>,
}

impl Linear {
    /// The product with `weight`, then `activation`, its output `shape`.
    pub fn new(weight: Weight, activation: Activation, shape: TVec<usize>) -> Linear {
        Linear { weight: Arc::new(weight), activation, residual: false, shape }
    }
}

impl PartialEq for Linear {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weight, &other.weight)
            && self.activation == other.activation
            && self.residual == other.residual
            && self.shape == other.shape
    }
}

impl Eq for Linear {}

impl Op for Linear {
    fn name(&self) -> StaticName {
        match *self.weight {
            Weight::F32(_) => "Linear".into(),
            Weight::Int8(_) => "QLinear".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let ((k, n), kernel) = match &*self.weight {
            Weight::F32(w) => ((w.k, w.n), w.kernel.name()),
            Weight::Int8(w) => (w.dims(), w.kernel().name()),
        };
        let residual = if self.residual { ", + residual" } else { "" };
        Ok(vec![format!("{k} x {n}, {:?}{residual}, kernel {kernel}", self.activation)])
    }

    op_as_typed_op!();
}

impl EvalOp for Linear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1 + self.residual as usize, "Linear takes x and, with a residual, r");
        let x = inputs[0].try_as_plain_ram()?;
        let residual = inputs.get(1).map(|r| r.try_as_plain_ram()).transpose()?;
        let residual = residual.as_ref().map(|r| r.as_slice::<f32>()).transpose()?;
        ensure!(
            residual.is_none_or(|r| r.len() == self.shape.iter().product::<usize>()),
            "the residual has another shape"
        );
        // SAFETY: f32 has no invalid values, and `linear` writes every element.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&self.shape)? };
        {
            let mut plain = y.try_as_plain_ram_mut()?;
            let (x, y) = (x.as_slice::<f32>()?, plain.as_slice_mut::<f32>()?);
            match &*self.weight {
                Weight::F32(w) => linear(x, w, self.activation, residual, y),
                Weight::Int8(w) => qlinear(x, w, self.activation, residual, y),
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Linear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "Linear takes f32");
        Ok(tvec!(f32::fact(&*self.shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (k, n) = self.weight.dims();
        let rows: usize = self.shape.iter().product::<usize>() / n.max(1);
        let dt = match *self.weight {
            Weight::F32(_) => f32::datum_type(),
            Weight::Int8(_) => i8::datum_type(),
        };
        Ok(tvec!((Cost::FMA(dt), (rows * k * n).to_dim())))
    }

    as_op!();
}

/// How an `EinSum` reads as `x W`: the weight as `K x N` and the output shape.
struct Product {
    weight: Vec<f32>,
    k: usize,
    n: usize,
    /// The output's axes that are columns (`N`), by position.
    column_axes: Vec<usize>,
}

/// The `EinSum` node as `x W`, when it is one: f32, a constant second input,
/// and, leaving out axes of size 1, the activation laid out as rows then
/// the summed axes, the output as the same rows then the weight's other axes.
fn as_product(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Product>> {
    let Some(op) = node.op_as::<EinSum>() else { return Ok(None) };
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let (x, w) = (model.outlet_fact(node.inputs[0])?, model.outlet_fact(node.inputs[1])?);
    let out = &node.outputs[0].fact;
    let Some(konst) = w.konst.as_ref() else { return Ok(None) };
    if x.konst.is_some() || [x, w, out].iter().any(|f| f.datum_type != f32::datum_type() || !f.is_plain()) {
        return Ok(None);
    }
    let (Some(xs), Some(ws), Some(os)) =
        (x.shape.as_concrete(), w.shape.as_concrete(), out.shape.as_concrete())
    else {
        return Ok(None);
    };
    let (inputs, outputs) = op.axes.to_strs();
    let [xa, wa]: [Vec<char>; 2] = [inputs[0].chars().collect(), inputs[1].chars().collect()];
    let oa: Vec<char> = outputs[0].chars().collect();
    if xa.len() != xs.len() || wa.len() != ws.len() || oa.len() != os.len() {
        return Ok(None);
    }
    // Each axis of size > 1, by where it is.
    let big = |axes: &[char], dims: &[usize]| -> Vec<char> {
        axes.iter().zip(dims).filter(|(_, &d)| d > 1).map(|(&a, _)| a).collect()
    };
    let (xb, wb, ob) = (big(&xa, xs), big(&wa, ws), big(&oa, os));
    let rows: Vec<char> = xb.iter().copied().filter(|a| !wb.contains(a)).collect();
    let sums: Vec<char> = xb.iter().copied().filter(|a| wb.contains(a)).collect();
    let cols: Vec<char> = wb.iter().copied().filter(|a| !xb.contains(a)).collect();
    // Every big axis of the weight is summed or a column, of the output a row or a column.
    let laid_out = xb == [&rows[..], &sums[..]].concat()
        && ob == [&rows[..], &cols[..]].concat()
        && sums.iter().all(|a| !ob.contains(a))
        && wb.len() == sums.len() + cols.len();
    if !laid_out || sums.is_empty() {
        return Ok(None);
    }
    let dim = |axes: &[char], dims: &[usize], a: char| dims[axes.iter().position(|&b| b == a).unwrap()];
    let k: usize = sums.iter().map(|&a| dim(&xa, xs, a)).product();
    let n: usize = cols.iter().map(|&a| dim(&wa, ws, a)).product();
    // The weight's axes as summed (in x's order), columns (in the output's),
    // then its axes of size 1, so that its values read as K x N.
    let position = |a: char| wa.iter().position(|&b| b == a).unwrap();
    let mut order: Vec<usize> = sums.iter().chain(&cols).map(|&a| position(a)).collect();
    let ones: Vec<usize> = (0..wa.len()).filter(|i| !order.contains(i)).collect();
    order.extend(ones);
    let view = konst.to_plain_array_view::<f32>()?;
    let weight: Vec<f32> = if order.iter().enumerate().all(|(i, &o)| i == o) {
        view.as_slice().context("a constant in standard layout")?.to_vec()
    } else {
        view.permuted_axes(order).iter().copied().collect()
    };
    let column_axes = oa.iter().enumerate().filter(|(_, a)| cols.contains(a)).map(|(i, _)| i).collect();
    Ok(Some(Product { weight, k, n, column_axes }))
}

/// The bias `add` adds to `product`'s output, when it is a constant over the
/// columns only and the sum keeps the product's shape.
fn bias_of(
    model: &TypedModel,
    product: &TypedNode,
    add: &TypedNode,
    columns: &[usize],
) -> TractResult<Option<Vec<f32>>> {
    let Some(op) = add.op_as::<TypedBinOp>() else { return Ok(None) };
    if !op.0.is::<Add>()
        || add.inputs.len() != 2
        || add.outputs[0].fact.shape != product.outputs[0].fact.shape
    {
        return Ok(None);
    }
    let other = add.inputs.iter().find(|i| i.node != product.id).copied();
    let Some(other) = other else { return Ok(None) };
    let fact = model.outlet_fact(other)?;
    let (Some(konst), Some(out)) = (fact.konst.as_ref(), product.outputs[0].fact.shape.as_concrete()) else {
        return Ok(None);
    };
    let shape = konst.shape();
    let over_columns = konst.datum_type() == f32::datum_type()
        && shape.len() == out.len()
        && shape.iter().enumerate().all(|(i, &d)| if columns.contains(&i) { d == out[i] } else { d == 1 });
    if !over_columns {
        return Ok(None);
    }
    Ok(Some(konst.to_plain_array_view::<f32>()?.iter().copied().collect()))
}

/// The other input of `add` when it adds a tensor of `product`'s shape to
/// its output (a residual connection).
fn residual_of(model: &TypedModel, product: &TypedNode, add: &TypedNode) -> TractResult<Option<OutletId>> {
    let Some(op) = add.op_as::<TypedBinOp>() else { return Ok(None) };
    let out = OutletId::new(product.id, 0);
    if !op.0.is::<Add>() || add.inputs.len() != 2 || !add.inputs.contains(&out) {
        return Ok(None);
    }
    let other = if add.inputs[0] == out { add.inputs[1] } else { add.inputs[0] };
    let fact = model.outlet_fact(other)?;
    let same = fact.datum_type == f32::datum_type()
        && fact.is_plain()
        && fact.shape == product.outputs[0].fact.shape
        && add.outputs[0].fact.shape == fact.shape;
    Ok(same.then_some(other))
}

/// Whether `node` is GELU (tract's `GeluExact`, from ONNX `Gelu` or its Erf form).
fn is_gelu(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>().is_some_and(|op| op.0.is::<GeluExact>())
}

/// Replaces each product with a constant weight in a decluttered model by a
/// [`Linear`] on `kernels`, taking in the bias added and the GELU applied to
/// it; returns how many, by weight.
pub fn replace(model: &mut TypedModel, kernels: Kernels) -> TractResult<Products> {
    let mut products = Products::default();
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(product) = as_product(model, node)? else { continue };
        let mut last = node;
        let mut bias = None;
        if let Some(add) = sole_successor(model, last) {
            if let Some(b) = bias_of(model, last, add, &product.column_axes)? {
                bias = Some(b);
                last = add;
            }
        }
        let mut activation = Activation::None;
        if let Some(next) = sole_successor(model, last).filter(|n| is_gelu(n)) {
            activation = Activation::Gelu;
            last = next;
        }
        let shape: TVec<usize> = last.outputs[0].fact.shape.as_concrete().context("a concrete shape")?.into();
        let mut residual = None;
        if let Some(add) = sole_successor(model, last) {
            residual = residual_of(model, last, add)?;
            if residual.is_some() {
                last = add;
            }
        }
        let weight =
            Weight::pack(kernels, &product.weight, product.k, product.n, bias.as_deref(), &mut products);
        let mut op = Linear::new(weight, activation, shape);
        op.residual = residual.is_some();
        let inputs: Vec<OutletId> = [node.inputs[0]].into_iter().chain(residual).collect();
        splice(model, &inputs, op, last.id)?;
    }
    Ok(products)
}

/// Products (`m`, `K`, `N`) the kernels' tests run: single values, odd
/// sizes against every tile, a ViT's 197 rows, long `K`.
#[cfg(test)]
pub(super) const ODD_SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (1, 192, 10),
    (5, 7, 3),
    (13, 33, 47),
    (197, 192, 576),
    (25, 64, 100),
    (7, 5, 90),
    (9, 64, 197),
    (9, 768, 197),
];
