//! Products with int8 weights, `y = x W + b` in integers, as one op of the
//! CPU plan: [`Linear`](super::linear::Linear) on a [`QWeight`], which the
//! plan names `QLinear`.
//!
//! The scheme:
//! - **Weights**: int8, symmetric, one scale per output column:
//!   `s_j = max_k |w_kj| / 127`, `q_kj = round(w_kj / s_j)` (ties to even),
//!   as the shipped int8 export and `bundle create --quantize int8` write
//!   them ([`quantize_columns`]). A model whose weights already are such
//!   values (Cast + Mul or DequantizeLinear in the graph, which tract folds
//!   to f32 constants) is recognized by [`int8_columns`].
//! - **Activations**: quantized per row (per token) as they arrive,
//!   asymmetric over `[min(x, 0), max(x, 0)]` in `L` steps:
//!   `a = range / L`, zero point `z = round(-min / a)`,
//!   `q_k = clamp(round(x_k / a) + z, 0, L)`. `L` is 255, or 127 on the
//!   AVX2 kernel, whose `vpmaddubsw` adds pairs of products in int16 and
//!   would saturate on 8-bit values (255 x 127 x 2 > 32767).
//! - **Sums**: `S_ij = sum_k (q_ik - z_i) q_kj` exactly in int32 (|S| <=
//!   255 x 127 x K, within int32 for K < 66 000), then
//!   `y_ij = fma(S_ij, a_i s_j, b_j)` in f32, GELU and the residual as in
//!   the f32 op.
//!
//! Error: against the f32 product with the dequantized weights `s_j q_kj`,
//! each activation is off by at most `a_i / 2`, so
//! `|y_ij - y32_ij| <= a_i / 2 * sum_k |s_j q_kj|` (plus the f32 rounding
//! of the store); against the original weights add
//! `s_j / 2 * sum_k |x_ik|`.
//!
//! Kernels, chosen at load by what the CPU has ([`QKernel`]): AVX-512 VNNI
//! and AVX-VNNI (`vpdpbusd`: 4 products of unsigned activation and signed
//! weight bytes into each int32 lane), AVX2 (`vpmaddubsw` + `vpmaddwd`),
//! and the arm64 dot product (`sdot`, signed bytes: the activations are
//! stored minus 128). Each keeps a tile of `MR x NR` int32 sums in registers
//! over `K` in steps of 4, from weights packed once in panels of
//! `[K / 4][NR][4]` bytes and activations quantized into `[K / 4][MR][4]`
//! bytes per tile of rows. A CPU with none of them (Cortex-A57 of the
//! Jetson Nano and TX2, x86 without AVX2) runs the f32 kernels on the
//! dequantized weights, and `doctor`, `bench` and `run` say so.
//!
//! This file holds the scheme, the choice of kernel and the packed weight;
//! `rows` the quantized activations, `kernel` the micro-kernel and the split
//! across threads, `x86` and `arm` the instructions of each, with their
//! activation quantizers.

use super::linear::Aligned;

#[cfg(target_arch = "aarch64")]
mod arm;
mod kernel;
mod rows;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use kernel::qlinear;

/// The int8 micro-kernels, by instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QKernel {
    /// x86_64 AVX-512 VNNI: 6 rows x 64 columns (4 registers).
    Avx512Vnni,
    /// x86_64 AVX-VNNI (the VEX form, 256 bits): 6 rows x 16 columns.
    AvxVnni,
    /// x86_64 AVX2, `vpmaddubsw` + `vpmaddwd`, 7-bit activations: 4 x 16.
    Avx2,
    /// aarch64 dot product (`asimddp`): 8 rows x 12 columns.
    NeonDot,
}

impl QKernel {
    /// The fastest int8 kernel this CPU runs, if any is faster than f32.
    pub fn detect() -> Option<QKernel> {
        QKernel::available().into_iter().next()
    }

    /// Every int8 kernel this CPU runs, fastest first.
    pub fn available() -> Vec<QKernel> {
        #[allow(unused_mut)]
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                kernels.push(QKernel::Avx512Vnni);
            }
            if avx2 && std::arch::is_x86_feature_detected!("avxvnni") {
                kernels.push(QKernel::AvxVnni);
            }
            if avx2 {
                kernels.push(QKernel::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            kernels.push(QKernel::NeonDot);
        }
        kernels
    }

    /// What `doctor` and `bench` print, e.g. `avx512-vnni 6x64`.
    pub fn name(self) -> &'static str {
        match self {
            QKernel::Avx512Vnni => "avx512-vnni 6x64",
            QKernel::AvxVnni => "avx-vnni 6x16",
            QKernel::Avx2 => "avx2 4x16 (7-bit activations)",
            QKernel::NeonDot => "neon sdot 8x12",
        }
    }

    /// Rows of a tile.
    const fn mr(self) -> usize {
        match self {
            QKernel::Avx512Vnni | QKernel::AvxVnni => 6,
            QKernel::Avx2 => 4,
            QKernel::NeonDot => 8,
        }
    }

    /// Columns of a tile, the width of a weight panel.
    const fn nr(self) -> usize {
        match self {
            QKernel::Avx512Vnni => 64,
            QKernel::AvxVnni | QKernel::Avx2 => 16,
            QKernel::NeonDot => 12,
        }
    }

    /// The largest quantized activation, `L`.
    const fn levels(self) -> i32 {
        match self {
            QKernel::Avx2 => 127,
            _ => 255,
        }
    }

    /// What is subtracted from a quantized activation to store it as the
    /// kernel's byte: 128 where it multiplies signed bytes.
    const fn offset(self) -> i32 {
        match self {
            QKernel::NeonDot => 128,
            _ => 0,
        }
    }
}

/// One scale per channel: `max |w| / 127` (1 for a channel of zeros), with
/// `channel(i)` the channel of `w[i]`.
fn scales(w: &[f32], channels: usize, channel: impl Fn(usize) -> usize) -> Vec<f32> {
    let mut amax = vec![0.0f32; channels];
    for (i, &v) in w.iter().enumerate() {
        amax[channel(i)] = amax[channel(i)].max(v.abs());
    }
    amax.iter().map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 }).collect()
}

/// Quantizes `w`, of shape `dims`, per channel of axis `axis`, as the
/// module says: the int8 values in `w`'s order, and one scale per channel.
pub fn quantize_axis(w: &[f32], dims: &[usize], axis: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), dims.iter().product::<usize>(), "the weight is not {dims:?}");
    let (channels, inner) = (dims[axis], dims[axis + 1..].iter().product::<usize>());
    let channel = |i: usize| (i / inner) % channels;
    let scale = scales(w, channels, channel);
    let q = w.iter().enumerate();
    let q = q.map(|(i, &v)| (v / scale[channel(i)]).round_ties_even().clamp(-127.0, 127.0) as i8).collect();
    (q, scale)
}

/// Quantizes the `K x N` weight (`K` rows of `N`) per column.
#[cfg(test)]
pub fn quantize_columns(w: &[f32], k: usize, n: usize) -> (Vec<i8>, Vec<f32>) {
    quantize_axis(w, &[k, n], 1)
}

/// The `K x N` weight as int8 columns when it is one already: every value
/// within 1e-3 of its column's step of an integer multiple of the step (a
/// dequantized int8 value is within 3e-5 of one, and a float weight of a
/// real model is nowhere near on every one of its `K` rows). A float
/// weight is told within its first values.
pub fn int8_columns(w: &[f32], k: usize, n: usize) -> Option<(Vec<i8>, Vec<f32>)> {
    if w.len() != k * n || w.is_empty() || w.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let scale = scales(w, n, |i| i % n);
    let mut q = Vec::with_capacity(w.len());
    for (i, &v) in w.iter().enumerate() {
        let x = v / scale[i % n];
        let r = x.round_ties_even();
        if (x - r).abs() > 1e-3 {
            return None;
        }
        q.push(r as i8);
    }
    Some((q, scale))
}

/// A `K x N` int8 weight packed for one kernel, with its scales and bias.
#[derive(Clone, Debug)]
pub struct QWeight {
    kernel: QKernel,
    k: usize,
    n: usize,
    /// `ceil(N / NR)` panels, each `ceil(K / 4)` groups of `NR` columns of 4
    /// bytes (rows `4g..4g + 4`), zero-padded.
    panels: Aligned<i8>,
    /// Per column, zero-padded to whole panels: the sum of its `q` (for the
    /// activations' zero points), its scale, its bias.
    colsum: Aligned<i32>,
    scale: Aligned<f32>,
    bias: Aligned<f32>,
}

impl QWeight {
    /// Packs `q` (`K` rows of `N`, row-major), its column `scale`s and
    /// `bias` (or none: zeros) for `kernel`.
    pub fn new(
        kernel: QKernel,
        q: &[i8],
        scale: &[f32],
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
    ) -> QWeight {
        assert_eq!(q.len(), k * n, "the weight is not {k} x {n}");
        assert_eq!(scale.len(), n, "the scales are not {n} values");
        let (nr, groups) = (kernel.nr(), k.div_ceil(4));
        let padded = n.div_ceil(nr) * nr;
        let mut w = QWeight {
            kernel,
            k,
            n,
            panels: Aligned::zeros(padded * groups * 4),
            colsum: Aligned::zeros(padded),
            scale: Aligned::zeros(padded),
            bias: Aligned::zeros(padded),
        };
        for (row, values) in q.chunks_exact(n).enumerate() {
            let (g, t) = (row / 4, row % 4);
            for (col, &v) in values.iter().enumerate() {
                let (p, c) = (col / nr, col % nr);
                w.panels[((p * groups + g) * nr + c) * 4 + t] = v;
                w.colsum[col] += v as i32;
            }
        }
        w.scale[..n].copy_from_slice(scale);
        if let Some(bias) = bias {
            assert_eq!(bias.len(), n, "the bias is not {n} values");
            w.bias[..n].copy_from_slice(bias);
        }
        w
    }

    pub fn kernel(&self) -> QKernel {
        self.kernel
    }

    /// `K x N`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    fn groups(&self) -> usize {
        self.k.div_ceil(4)
    }

    fn panel_count(&self) -> usize {
        self.n.div_ceil(self.kernel.nr())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::linear::{linear, Activation, Epilogue, PackedWeight, ODD_SHAPES};
    use super::super::pool;
    use super::rows::quantize_row;
    use super::*;
    use edgevit_kernels::testing::XorShift;

    fn values(rng: &mut XorShift, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// The scheme in scalar code: each row quantized as the kernels do, the
    /// int32 sums `sum (q - z) w` one product at a time, and the same store.
    fn reference(
        kernel: QKernel,
        x: &[f32],
        q: &[i8],
        scale: &[f32],
        bias: &[f32],
        (k, n): (usize, usize),
        epilogue: Epilogue<'_>,
    ) -> Vec<f32> {
        let m = x.len() / k;
        let mut y = vec![0.0f32; m * n];
        let mut line = vec![0u8; k];
        for i in 0..m {
            let (step, correction) =
                quantize_row(&x[i * k..][..k], kernel.levels(), kernel.offset(), &mut line);
            let zero = kernel.offset() - correction;
            for j in 0..n {
                let mut sum = 0i32;
                for p in 0..k {
                    let stored = if kernel.offset() == 0 { line[p] as i32 } else { line[p] as i8 as i32 };
                    sum += (stored + kernel.offset() - zero) * q[p * n + j] as i32;
                }
                y[i * n + j] = (sum as f32).mul_add(step * scale[j], bias[j]);
            }
            epilogue.apply(i, 0, &mut y[i * n..][..n]);
        }
        y
    }

    fn check(
        kernel: QKernel,
        (m, k, n): (usize, usize, usize),
        activation: Activation,
        residual: bool,
        threads: usize,
    ) {
        let mut rng = XorShift::new((m * 1000 + k * 10 + n) as u64 | 1);
        let (x, w, b) = (values(&mut rng, m * k), values(&mut rng, k * n), values(&mut rng, n));
        let r = residual.then(|| values(&mut rng, m * n));
        let (q, scale) = quantize_columns(&w, k, n);
        let packed = QWeight::new(kernel, &q, &scale, k, n, Some(&b));
        let mut y = vec![f32::NAN; m * n];
        let pool = Arc::new(pool::Pool::new(threads).unwrap());
        pool.scope(|| qlinear(&x, &packed, activation, r.as_deref(), &mut y));
        let epilogue = Epilogue { activation, residual: r.as_deref(), n };
        let want = reference(kernel, &x, &q, &scale, &b, (k, n), epilogue);
        for (i, (got, want)) in y.iter().zip(&want).enumerate() {
            assert!(
                got.to_bits() == want.to_bits(),
                "{} m {m} k {k} n {n} {activation:?} threads {threads}: y[{}, {}] = {got}, want {want}",
                kernel.name(),
                i / n,
                i % n
            );
        }
    }

    #[test]
    fn every_kernel_matches_the_scalar_reference_exactly_on_odd_shapes() {
        let kernels = QKernel::available();
        eprintln!("int8 kernels here: {:?}", kernels.iter().map(|k| k.name()).collect::<Vec<_>>());
        for kernel in kernels {
            for shape in ODD_SHAPES {
                check(kernel, shape, Activation::None, false, 1);
                check(kernel, shape, Activation::Gelu, true, 1);
            }
            check(kernel, (8 * 197, 64, 200), Activation::Gelu, false, 3);
        }
    }

    #[test]
    fn qlinear_is_within_its_stated_bound_of_the_f32_product() {
        let (m, k, n) = (37, 192, 70);
        let mut rng = XorShift::new(5);
        let (x, w, b) = (values(&mut rng, m * k), values(&mut rng, k * n), values(&mut rng, n));
        let (q, scale) = quantize_columns(&w, k, n);
        let dequantized: Vec<f32> = q.iter().enumerate().map(|(i, &q)| q as f32 * scale[i % n]).collect();
        let mut fp32 = vec![0.0; m * n];
        let f32_kernel = super::super::linear::Kernel::detect();
        linear(
            &x,
            &PackedWeight::new(f32_kernel, &dequantized, k, n, Some(&b)),
            Activation::None,
            None,
            &mut fp32,
        );
        for kernel in QKernel::available() {
            let mut y = vec![0.0; m * n];
            qlinear(&x, &QWeight::new(kernel, &q, &scale, k, n, Some(&b)), Activation::None, None, &mut y);
            for i in 0..m {
                let row = &x[i * k..][..k];
                let (lo, hi) = row.iter().fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let step = (hi - lo) as f64 / kernel.levels() as f64;
                for j in 0..n {
                    let weights: f64 = (0..k).map(|p| dequantized[p * n + j].abs() as f64).sum();
                    let bound = step / 2.0 * weights * (1.0 + 1e-5) + 1e-5;
                    let diff = (y[i * n + j] - fp32[i * n + j]).abs() as f64;
                    assert!(diff <= bound, "{}: y[{i}, {j}] off by {diff} > {bound}", kernel.name());
                }
            }
        }
    }

    #[test]
    fn int8_weights_are_recognized_and_float_ones_are_not() {
        let (k, n) = (64, 24);
        let mut rng = XorShift::new(9);
        let w = values(&mut rng, k * n);
        assert!(int8_columns(&w, k, n).is_none(), "float weights taken for int8");
        let (q, scale) = quantize_columns(&w, k, n);
        let dequantized: Vec<f32> = q.iter().enumerate().map(|(i, &q)| q as f32 * scale[i % n]).collect();
        let (q2, scale2) = int8_columns(&dequantized, k, n).expect("dequantized int8 weights");
        assert_eq!(q, q2);
        for (a, b) in scale.iter().zip(&scale2) {
            assert!((a - b).abs() <= a * 1e-6, "scale {a} came back as {b}");
        }
        // A zero column has scale 1 and stays zero; every column's largest magnitude is 127.
        let mut zeros = dequantized.clone();
        for row in zeros.chunks_exact_mut(n) {
            row[3] = 0.0;
        }
        let (q3, scale3) = int8_columns(&zeros, k, n).unwrap();
        assert_eq!(scale3[3], 1.0);
        assert!((0..k).all(|p| q3[p * n + 3] == 0));
        assert!((0..n).filter(|&j| j != 3).all(|j| (0..k).any(|p| q3[p * n + j].unsigned_abs() == 127)));
        assert!(int8_columns(&[f32::NAN; 4], 2, 2).is_none());
    }
}
