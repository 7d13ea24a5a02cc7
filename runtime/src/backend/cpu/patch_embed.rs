//! A ViT's patch embedding, a convolution whose stride is its kernel, as a
//! gather of the patches and a [`Linear`].
//!
//! With the stride equal to the kernel and no padding, the patches do not
//! overlap: each output pixel is one patch of the image (`C x kh x kw`
//! values) times the kernel, a product with a constant weight. [`Patchify`]
//! copies the patches into rows (one pass over the image), the product runs
//! on our kernels, and an axis move gives back the convolution's NCHW
//! layout, which tract then folds into the reshape that timm's export
//! follows the convolution with.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::linear::{Activation, Kernels, Linear, Products, Weight};

/// `[N, C, H, W]` to `[N, H / kh, W / kw, C * kh * kw]`: each patch as a row,
/// its values in the kernel's (channel, row, column) order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Patchify {
    kh: usize,
    kw: usize,
}

impl Patchify {
    fn output_shape(&self, shape: &[usize]) -> TractResult<TVec<usize>> {
        let &[n, c, h, w] = shape else { bail!("Patchify takes [N, C, H, W], not {shape:?}") };
        ensure!(
            h % self.kh == 0 && w % self.kw == 0,
            "{h} x {w} is not whole {} x {} patches",
            self.kh,
            self.kw
        );
        Ok(tvec![n, h / self.kh, w / self.kw, c * self.kh * self.kw])
    }
}

/// The patches of `x` (`[n, c, h, w]`) into `y` (see [`Patchify`]).
fn patchify(x: &[f32], [n, c, h, w]: [usize; 4], kh: usize, kw: usize, y: &mut [f32]) {
    let (ph, pw) = (h / kh, w / kw);
    let mut out = y.iter_mut();
    for image in x.chunks_exact(c * h * w).take(n) {
        for i in 0..ph {
            for j in 0..pw {
                for channel in image.chunks_exact(h * w) {
                    for u in 0..kh {
                        let row = &channel[(i * kh + u) * w + j * kw..][..kw];
                        for (&x, y) in row.iter().zip(&mut out) {
                            *y = x;
                        }
                    }
                }
            }
        }
    }
}

impl Op for Patchify {
    fn name(&self) -> StaticName {
        "Patchify".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{} x {} patches", self.kh, self.kw)])
    }

    op_as_typed_op!();
}

impl EvalOp for Patchify {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = self.output_shape(x.shape())?;
        let &[n, c, h, w] = x.shape() else { unreachable!("checked by output_shape") };
        // SAFETY: f32 has no invalid values, and `patchify` writes every element.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        {
            let x = x.try_as_plain_ram()?;
            let mut plain = y.try_as_plain_ram_mut()?;
            patchify(x.as_slice::<f32>()?, [n, c, h, w], self.kh, self.kw, plain.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Patchify {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "Patchify takes f32");
        let shape = inputs[0].shape.as_concrete().context("Patchify needs a concrete shape")?;
        Ok(tvec!(f32::fact(&*self.output_shape(shape)?)))
    }

    as_op!();
}

/// A patch-embedding convolution's parts.
struct Embedding {
    patchify: Patchify,
    /// `K x N`: K = C kh kw, N = O.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// `conv` as patches and a product, when it is a patch embedding over f32
/// NCHW input of concrete shape.
fn patch_embedding(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<Embedding>> {
    let spec = &conv.pool_spec;
    let kernel = spec.kernel_shape.as_slice();
    let &[kh, kw] = kernel else { return Ok(None) };
    let no_padding = match &spec.padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(before, after) => before.iter().chain(after).all(|&p| p == 0),
        _ => false,
    };
    let unit_dilation = spec.dilations.as_ref().is_none_or(|d| d.iter().all(|&d| d == 1));
    let stride_is_kernel = spec.strides.as_ref().is_some_and(|s| s.as_slice() == kernel);
    if !(no_padding && unit_dilation && stride_is_kernel)
        || conv.group != 1
        || conv.q_params.is_some()
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let (Some(weight), Some(bias)) =
        (model.outlet_fact(node.inputs[1])?.konst.clone(), model.outlet_fact(node.inputs[2])?.konst.clone())
    else {
        return Ok(None);
    };
    let Some(&[_, c, h, w]) = x.shape.as_concrete() else { return Ok(None) };
    let o = spec.output_channels;
    let f32s =
        [x.datum_type, weight.datum_type(), bias.datum_type()].iter().all(|&dt| dt == f32::datum_type());
    if !f32s || h % kh != 0 || w % kw != 0 || weight.shape() != [o, c, kh, kw] || bias.len() != o {
        return Ok(None);
    }
    // OIHW is O rows of C kh kw: transposed, the K x N weight.
    let oihw = weight.to_plain_array_view::<f32>()?.into_shape_with_order((o, c * kh * kw))?;
    let kn: Vec<f32> = oihw.t().iter().copied().collect();
    let bias = bias.to_plain_array_view::<f32>()?.iter().copied().collect();
    Ok(Some(Embedding { patchify: Patchify { kh, kw }, weight: kn, bias }))
}

/// Replaces each patch-embedding convolution in a decluttered model by
/// [`Patchify`], a [`Linear`] on `kernels` and an axis move; returns how
/// many, by weight.
pub fn replace(model: &mut TypedModel, kernels: Kernels) -> TractResult<Products> {
    let mut products = Products::default();
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else { continue };
        let Some(Embedding { patchify, weight, bias }) = patch_embedding(model, node, conv)? else {
            continue;
        };
        let shape = node.outputs[0].fact.shape.as_concrete().context("a concrete shape")?.to_vec();
        let &[n, o, ph, pw] = &shape[..] else { continue };
        let k = weight.len() / o;
        let weight = Weight::pack(kernels, &weight, k, o, Some(&bias), &mut products);
        let linear = Linear::new(weight, Activation::None, tvec![n, ph, pw, o]);
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let rows = patch.wire_node(format!("{}.patches", node.name), patchify, &[x])?;
        let nhwc = patch.wire_node(format!("{}.linear", node.name), linear, &rows)?;
        let nchw = patch.wire_node(&node.name, AxisOp::Move(3, 1), &nhwc)?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), nchw)?;
        patch.apply(model)?;
    }
    Ok(products)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevit_kernels::testing::XorShift;
    use tract_onnx::tract_core::ops::cnn::PoolSpec;

    fn tensor(rng: &mut XorShift, shape: &[usize]) -> Tensor {
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.uniform(-1.0, 1.0)).collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    #[test]
    fn the_replacement_computes_the_convolution() {
        let mut rng = XorShift::new(9);
        let (c, o, k) = (3, 5, 4);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, c, 8, 12])).unwrap();
        let w = model.add_const("w", tensor(&mut rng, &[o, c, k, k])).unwrap();
        let b = model.add_const("b", tensor(&mut rng, &[o])).unwrap();
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![k, k],
            padding: PaddingSpec::Valid,
            dilations: None,
            strides: Some(tvec![k, k]),
            input_channels: c,
            output_channels: o,
        };
        let conv = Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group: 1, q_params: None };
        let y = model.wire_node("conv", conv, &[x, w, b]).unwrap();
        model.outputs = y.to_vec();
        let input = tensor(&mut rng, &[2, c, 8, 12]);
        let run = |model: TypedModel| {
            let out = model.into_runnable().unwrap().run(tvec![input.clone().into_tvalue()]).unwrap();
            out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>()
        };
        let want = run(model.clone());
        assert_eq!(replace(&mut model, Kernels::detect()).unwrap().f32, 1);
        let got = run(model);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn patches_are_rows_in_kernel_order() {
        // 1 image, 2 channels of 4 x 6, 2 x 3 patches.
        let x: Vec<f32> = (0..48).map(|v| v as f32).collect();
        let mut y = vec![0.0; 48];
        patchify(&x, [1, 2, 4, 6], 2, 3, &mut y);
        // Patch (0, 1): channel 0 rows 0-1 columns 3-5, then channel 1's.
        assert_eq!(&y[12..24], &[3., 4., 5., 9., 10., 11., 27., 28., 29., 33., 34., 35.]);
        // Patch (1, 0) starts at row 2 of channel 0.
        assert_eq!(y[24], 12.0);
    }
}
