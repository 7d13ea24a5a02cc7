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

use super::linear::{row_chunk, split_tiles, Aligned, Epilogue};
use super::pool;

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

/// Activation rows quantized for one kernel.
struct QRows {
    /// Tiles of `MR` rows (the last zero-padded), each `ceil(K / 4)` groups
    /// of `MR` rows of 4 bytes.
    bytes: Vec<u8>,
    /// Per row: the step `a`, and `offset - z` (what multiplies the column
    /// sums to turn the stored bytes' sums into `sum (q - z) w`).
    step: Vec<f32>,
    correction: Vec<i32>,
}

/// How a row of activations is quantized: its step `a`, `1 / a`, and its
/// zero point `z`.
#[derive(Clone, Copy)]
struct RowScale {
    step: f32,
    inv: f32,
    zero: i32,
}

impl RowScale {
    /// The row whose values lie in `[lo, hi]` (`lo <= 0 <= hi`) in `levels` steps.
    #[inline(always)]
    fn new(lo: f32, hi: f32, levels: i32) -> RowScale {
        let range = (hi - lo) / levels as f32;
        let step = if range > 0.0 && range.is_finite() { range } else { 1.0 };
        let inv = 1.0 / step;
        let zero = (-lo * inv).round_ties_even().clamp(0.0, levels as f32) as i32;
        RowScale { step, inv, zero }
    }

    /// `v` quantized, minus `offset`, as the kernel's byte.
    #[inline(always)]
    fn byte(self, v: f32, levels: i32, offset: i32) -> u8 {
        (((v * self.inv).round_ties_even() as i32 + self.zero).clamp(0, levels) - offset) as u8
    }
}

/// Quantizes one row into `out` (`K` bytes, as the kernel stores them);
/// returns its step and correction. The SIMD quantizers below compute the
/// same values (rounding to nearest even, as `cvtps2dq` and `fcvtns` do).
fn quantize_row(x: &[f32], levels: i32, offset: i32, out: &mut [u8]) -> (f32, i32) {
    let lo = x.iter().fold(0.0f32, |a, &b| a.min(b));
    let hi = x.iter().fold(0.0f32, |a, &b| a.max(b));
    let scale = RowScale::new(lo, hi, levels);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = scale.byte(v, levels, offset);
    }
    (scale.step, offset - scale.zero)
}

/// [`quantize_row`] on AVX2, 32 values at a time, for the unsigned kernels.
///
/// # Safety
/// The CPU has AVX2; `out` is at least as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], levels: i32, out: &mut [u8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    // SAFETY: loads and stores within x and out, in chunks of 8 and 32.
    unsafe {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let chunks = x.chunks_exact(8);
        let (mut lo1, mut hi1) = (0.0f32, 0.0f32);
        for &v in chunks.remainder() {
            (lo1, hi1) = (lo1.min(v), hi1.max(v));
        }
        for chunk in chunks {
            let v = _mm256_loadu_ps(chunk.as_ptr());
            (lo, hi) = (_mm256_min_ps(lo, v), _mm256_max_ps(hi, v));
        }
        let (mut l, mut h) = ([0.0f32; 8], [0.0f32; 8]);
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
        let scale =
            RowScale::new(l.iter().fold(lo1, |a, &b| a.min(b)), h.iter().fold(hi1, |a, &b| a.max(b)), levels);
        let (inv, zero, top) =
            (_mm256_set1_ps(scale.inv), _mm256_set1_epi32(scale.zero), _mm256_set1_epi32(levels));
        let q = |p: *const f32| {
            let q = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), inv)), zero);
            _mm256_min_epi32(_mm256_max_epi32(q, _mm256_setzero_si256()), top)
        };
        let whole = x.len() / 32 * 32;
        for i in (0..whole).step_by(32) {
            let p = x.as_ptr().add(i);
            let low = _mm256_packs_epi32(q(p), q(p.add(8)));
            let high = _mm256_packs_epi32(q(p.add(16)), q(p.add(24)));
            // The packs interleave the 128-bit halves; the permute puts the
            // 32 bytes back in order.
            let bytes = _mm256_permutevar8x32_epi32(
                _mm256_packus_epi16(low, high),
                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
            );
            _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), bytes);
        }
        for (o, &v) in out[whole..].iter_mut().zip(&x[whole..]) {
            *o = scale.byte(v, levels, 0);
        }
        (scale.step, -scale.zero)
    }
}

/// [`quantize_row`] on NEON, 8 values at a time, for the signed kernel.
#[cfg(target_arch = "aarch64")]
fn quantize_row_neon(x: &[f32], levels: i32, offset: i32, out: &mut [u8]) -> (f32, i32) {
    use std::arch::aarch64::*;
    // SAFETY: NEON is part of aarch64; loads and stores within x and out,
    // in chunks of 4 and 8.
    unsafe {
        let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        let chunks = x.chunks_exact(4);
        let (mut lo1, mut hi1) = (0.0f32, 0.0f32);
        for &v in chunks.remainder() {
            (lo1, hi1) = (lo1.min(v), hi1.max(v));
        }
        for chunk in chunks {
            let v = vld1q_f32(chunk.as_ptr());
            (lo, hi) = (vminq_f32(lo, v), vmaxq_f32(hi, v));
        }
        let scale = RowScale::new(lo1.min(vminvq_f32(lo)), hi1.max(vmaxvq_f32(hi)), levels);
        let (zero, top, off) = (vdupq_n_s32(scale.zero), vdupq_n_s32(levels), vdupq_n_s32(offset));
        let q = |p: *const f32| {
            let q = vaddq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p), scale.inv)), zero);
            vmovn_s32(vsubq_s32(vminq_s32(vmaxq_s32(q, vdupq_n_s32(0)), top), off))
        };
        let whole = x.len() / 8 * 8;
        for i in (0..whole).step_by(8) {
            let p = x.as_ptr().add(i);
            vst1_s8(out.as_mut_ptr().add(i).cast(), vmovn_s16(vcombine_s16(q(p), q(p.add(4)))));
        }
        for (o, &v) in out[whole..].iter_mut().zip(&x[whole..]) {
            *o = scale.byte(v, levels, offset);
        }
        (scale.step, offset - scale.zero)
    }
}

/// One row quantized on `kernel`'s CPU (see [`quantize_row`]).
fn quantize_row_on(kernel: QKernel, x: &[f32], out: &mut [u8]) -> (f32, i32) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `QWeight` is made for detected kernels only
        // (`QKernel::available`), and each x86 one needs AVX2; `out` is `x`'s length.
        QKernel::Avx512Vnni | QKernel::AvxVnni | QKernel::Avx2 => unsafe {
            quantize_row_avx2(x, kernel.levels(), out)
        },
        #[cfg(target_arch = "aarch64")]
        QKernel::NeonDot => quantize_row_neon(x, kernel.levels(), kernel.offset(), out),
        #[allow(unreachable_patterns)]
        _ => quantize_row(x, kernel.levels(), kernel.offset(), out),
    }
}

/// Where the tasks of [`QRows::quantize`] write: each its own tiles.
struct Tiles {
    bytes: *mut u8,
    step: *mut f32,
    correction: *mut i32,
}

// SAFETY: each task writes the bytes, steps and corrections of its own
// range of tiles only.
unsafe impl Sync for Tiles {}

impl QRows {
    /// `x`, `m` rows of `k`, for `kernel`, split by tiles of rows across
    /// the current [`pool`].
    fn quantize(kernel: QKernel, x: &[f32], m: usize, k: usize) -> QRows {
        let (mr, groups) = (kernel.mr(), k.div_ceil(4));
        let (tiles, tile_bytes) = (m.div_ceil(mr), groups * mr * 4);
        let mut rows = QRows {
            bytes: vec![0; tiles * tile_bytes],
            step: vec![1.0; tiles * mr],
            correction: vec![0; tiles * mr],
        };
        let out = Tiles {
            bytes: rows.bytes.as_mut_ptr(),
            step: rows.step.as_mut_ptr(),
            correction: rows.correction.as_mut_ptr(),
        };
        let (out, parts) = (&out, pool::threads().min(tiles));
        pool::for_each(parts, |part| {
            let first = part * tiles / parts;
            let count = (part + 1) * tiles / parts - first;
            // SAFETY: tiles first..first + count are this task's, inside the vectors.
            let (bytes, step, correction) = unsafe {
                (
                    std::slice::from_raw_parts_mut(out.bytes.add(first * tile_bytes), count * tile_bytes),
                    std::slice::from_raw_parts_mut(out.step.add(first * mr), count * mr),
                    std::slice::from_raw_parts_mut(out.correction.add(first * mr), count * mr),
                )
            };
            let mut line = vec![0u8; groups * 4];
            let rows = first * mr..((first + count) * mr).min(m);
            for (i, x) in x[rows.start * k..rows.end * k].chunks_exact(k).enumerate() {
                (step[i], correction[i]) = quantize_row_on(kernel, x, &mut line[..k]);
                let tile = bytes[(i / mr) * tile_bytes..][..tile_bytes].as_mut_ptr();
                for g in 0..groups {
                    // SAFETY: group g of the line (groups x 4 bytes) to row
                    // i % mr of group g of the tile (groups x mr x 4 bytes).
                    unsafe {
                        let four = line.as_ptr().add(g * 4).cast::<u32>().read_unaligned();
                        tile.add((g * mr + i % mr) * 4).cast::<u32>().write_unaligned(four);
                    }
                }
            }
        });
        rows
    }
}

/// One register of int32 sums, as an int8 kernel uses it.
trait Dot: Copy {
    const LANES: usize;
    /// `correction * colsum[..LANES]`, the sums' starting value.
    /// # Safety
    /// The CPU has the instructions the implementation uses, and `colsum`
    /// is readable for `LANES` values; so for all below.
    unsafe fn init(correction: i32, colsum: *const i32) -> Self;
    /// One group of 4 rows of `K`: `acc[i][j] += a[i] . w[j]`, with the
    /// tile's `MR` rows of 4 bytes at `a` and `NV` registers of columns of
    /// 4 bytes at `w`.
    /// # Safety
    /// `a` is readable for `MR x 4` bytes, `w` for `NV x LANES x 4`.
    unsafe fn step<const MR: usize, const NV: usize>(acc: &mut [[Self; NV]; MR], a: *const u8, w: *const i8);
    /// `y = fma(self, step * scale, bias)` for `LANES` columns.
    /// # Safety
    /// `scale` and `bias` are readable and `y` writable for `LANES` values.
    unsafe fn store(self, step: f32, scale: *const f32, bias: *const f32, y: *mut f32);
}

/// `MR` quantized rows times `NV` registers of a panel's columns over all
/// of `K`, stored to `y` (`ldy` apart) as `MR` rows of `NV * LANES` f32.
///
/// # Safety
/// The CPU runs `D`; `a` is readable for `groups x MR x 4` bytes, `panel`
/// for `groups x nr x 4`, `correction` and `step` for `MR` values, `colsum`,
/// `scale` and `bias` for `NV * LANES`, and `y` writable for `MR` rows of
/// `NV * LANES`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<D: Dot, const MR: usize, const NV: usize>(
    groups: usize,
    a: *const u8,
    panel: *const i8,
    nr: usize,
    rows: (*const i32, *const f32),
    cols: (*const i32, *const f32, *const f32),
    y: *mut f32,
    ldy: usize,
) {
    let ((correction, step), (colsum, scale, bias)) = (rows, cols);
    // SAFETY: every access is inside the ranges the caller guarantees.
    unsafe {
        let mut acc = [[D::init(0, colsum); NV]; MR];
        for (i, row) in acc.iter_mut().enumerate() {
            for (j, acc) in row.iter_mut().enumerate() {
                *acc = D::init(*correction.add(i), colsum.add(j * D::LANES));
            }
        }
        for g in 0..groups {
            D::step::<MR, NV>(&mut acc, a.add(g * MR * 4), panel.add(g * nr * 4));
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, acc) in row.iter().enumerate() {
                let at = j * D::LANES;
                acc.store(*step.add(i), scale.add(at), bias.add(at), y.add(i * ldy + at));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::marker::PhantomData;

    use super::Dot;

    /// One x86 register of int32 lanes, with what a step of the kernel needs.
    trait Reg: Copy {
        const LANES: usize;
        /// # Safety
        /// The CPU has the instructions the implementation uses; so for all below.
        unsafe fn zero() -> Self;
        /// # Safety
        /// `p` is readable for `LANES x 4` bytes.
        unsafe fn load(p: *const i8) -> Self;
        /// # Safety
        /// As for [`Reg::zero`].
        unsafe fn splat(v: i32) -> Self;
        /// `self + a . b` by groups of 4 bytes: unsigned `a`, signed `b`.
        /// # Safety
        /// As for [`Reg::zero`].
        unsafe fn dot(self, a: Self, b: Self) -> Self;
        /// `v * colsum[..LANES]`.
        /// # Safety
        /// `colsum` is readable for `LANES` values.
        unsafe fn times(v: i32, colsum: *const i32) -> Self;
        /// # Safety
        /// As for [`Dot::store`].
        unsafe fn store(self, step: f32, scale: *const f32, bias: *const f32, y: *mut f32);
    }

    /// An int8 kernel on one kind of x86 register: each row's 4 bytes
    /// broadcast to every lane, times `NV` registers of the panel's columns.
    #[derive(Clone, Copy)]
    pub(super) struct X86<R>(R);

    impl<R: Reg> Dot for X86<R> {
        const LANES: usize = R::LANES;
        #[inline(always)]
        unsafe fn init(correction: i32, colsum: *const i32) -> Self {
            // SAFETY: the caller's contract.
            X86(unsafe { R::times(correction, colsum) })
        }
        #[inline(always)]
        unsafe fn step<const MR: usize, const NV: usize>(
            acc: &mut [[Self; NV]; MR],
            a: *const u8,
            w: *const i8,
        ) {
            // SAFETY: the caller's contract.
            unsafe {
                let mut b = [R::zero(); NV];
                for (j, b) in b.iter_mut().enumerate() {
                    *b = R::load(w.add(j * R::LANES * 4));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let x = R::splat((a.add(i * 4) as *const i32).read_unaligned());
                    for (acc, &b) in row.iter_mut().zip(&b) {
                        acc.0 = acc.0.dot(x, b);
                    }
                }
            }
        }
        #[inline(always)]
        unsafe fn store(self, step: f32, scale: *const f32, bias: *const f32, y: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { self.0.store(step, scale, bias, y) }
        }
    }

    pub(super) type Vnni512 = X86<Zmm>;
    pub(super) type AvxVnni = X86<Ymm<Vnni>>;
    pub(super) type Avx2 = X86<Ymm<Madd>>;

    #[derive(Clone, Copy)]
    pub(super) struct Zmm(__m512i);

    // SAFETY (all): AVX-512F and, for `dot`, AVX-512 VNNI, by the callers' contracts.
    impl Reg for Zmm {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Zmm(unsafe { _mm512_setzero_si512() })
        }
        #[inline(always)]
        unsafe fn load(p: *const i8) -> Self {
            Zmm(unsafe { _mm512_loadu_si512(p.cast()) })
        }
        #[inline(always)]
        unsafe fn splat(v: i32) -> Self {
            Zmm(unsafe { _mm512_set1_epi32(v) })
        }
        #[inline(always)]
        unsafe fn dot(self, a: Self, b: Self) -> Self {
            Zmm(unsafe { _mm512_dpbusd_epi32(self.0, a.0, b.0) })
        }
        #[inline(always)]
        unsafe fn times(v: i32, colsum: *const i32) -> Self {
            Zmm(unsafe { _mm512_mullo_epi32(_mm512_set1_epi32(v), _mm512_loadu_si512(colsum.cast())) })
        }
        #[inline(always)]
        unsafe fn store(self, step: f32, scale: *const f32, bias: *const f32, y: *mut f32) {
            unsafe {
                let s = _mm512_mul_ps(_mm512_set1_ps(step), _mm512_loadu_ps(scale));
                _mm512_storeu_ps(y, _mm512_fmadd_ps(_mm512_cvtepi32_ps(self.0), s, _mm512_loadu_ps(bias)));
            }
        }
    }

    /// `acc + a . b` by groups of 4 bytes on 256 bits, the AVX-VNNI or the AVX2 way.
    pub(super) trait Dot256: Copy {
        /// # Safety
        /// The CPU has the instructions the implementation uses.
        unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
    }

    #[derive(Clone, Copy)]
    pub(super) struct Vnni;

    impl Dot256 for Vnni {
        #[inline(always)]
        unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: the caller's contract (AVX-VNNI).
            unsafe { _mm256_dpbusd_avx_epi32(acc, a, b) }
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Madd;

    impl Dot256 for Madd {
        #[inline(always)]
        unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: the caller's contract (AVX2). With activations of at
            // most 127, each pair of products is within int16.
            unsafe {
                _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
            }
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Ymm<T>(__m256i, PhantomData<T>);

    // SAFETY (all): AVX2 and, for `dot`, what `T` needs, by the callers' contracts.
    impl<T: Dot256> Reg for Ymm<T> {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Ymm(unsafe { _mm256_setzero_si256() }, PhantomData)
        }
        #[inline(always)]
        unsafe fn load(p: *const i8) -> Self {
            Ymm(unsafe { _mm256_loadu_si256(p.cast()) }, PhantomData)
        }
        #[inline(always)]
        unsafe fn splat(v: i32) -> Self {
            Ymm(unsafe { _mm256_set1_epi32(v) }, PhantomData)
        }
        #[inline(always)]
        unsafe fn dot(self, a: Self, b: Self) -> Self {
            Ymm(unsafe { T::dot(self.0, a.0, b.0) }, PhantomData)
        }
        #[inline(always)]
        unsafe fn times(v: i32, colsum: *const i32) -> Self {
            let v = unsafe { _mm256_mullo_epi32(_mm256_set1_epi32(v), _mm256_loadu_si256(colsum.cast())) };
            Ymm(v, PhantomData)
        }
        #[inline(always)]
        unsafe fn store(self, step: f32, scale: *const f32, bias: *const f32, y: *mut f32) {
            unsafe {
                let s = _mm256_mul_ps(_mm256_set1_ps(step), _mm256_loadu_ps(scale));
                _mm256_storeu_ps(y, _mm256_fmadd_ps(_mm256_cvtepi32_ps(self.0), s, _mm256_loadu_ps(bias)));
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;
    use std::arch::asm;

    use super::Dot;

    #[derive(Clone, Copy)]
    pub(super) struct Sdot(int32x4_t);

    /// `acc + w . a[LANE]`: each int32 lane of `acc` plus the dot product
    /// of its 4 bytes of `w` with bytes `4 LANE..4 LANE + 4` of `a`. The
    /// instruction has no stable intrinsic yet.
    ///
    /// # Safety
    /// The CPU has the dot product (`asimddp`).
    #[inline(always)]
    unsafe fn sdot<const LANE: usize>(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: a register-only instruction that the caller's CPU has.
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{lane}]",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                a = in(vreg) a,
                lane = const LANE,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }

    impl Dot for Sdot {
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn init(correction: i32, colsum: *const i32) -> Self {
            // SAFETY: the caller's contract; NEON is part of aarch64.
            unsafe { Sdot(vmulq_n_s32(vld1q_s32(colsum), correction)) }
        }
        #[inline(always)]
        unsafe fn step<const MR: usize, const NV: usize>(
            acc: &mut [[Self; NV]; MR],
            a: *const u8,
            w: *const i8,
        ) {
            // SAFETY: the caller's contract: MR is a multiple of 4, so the
            // rows are MR / 4 registers of 4 rows.
            unsafe {
                let mut b = [vdupq_n_s8(0); NV];
                for (j, b) in b.iter_mut().enumerate() {
                    *b = vld1q_s8(w.add(j * 16));
                }
                for (quad, rows) in acc.chunks_exact_mut(4).enumerate() {
                    let x = vld1q_s8(a.add(quad * 16).cast());
                    for (j, &b) in b.iter().enumerate() {
                        rows[0][j].0 = sdot::<0>(rows[0][j].0, b, x);
                        rows[1][j].0 = sdot::<1>(rows[1][j].0, b, x);
                        rows[2][j].0 = sdot::<2>(rows[2][j].0, b, x);
                        rows[3][j].0 = sdot::<3>(rows[3][j].0, b, x);
                    }
                }
            }
        }
        #[inline(always)]
        unsafe fn store(self, step: f32, scale: *const f32, bias: *const f32, y: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe {
                let s = vmulq_n_f32(vld1q_f32(scale), step);
                vst1q_f32(y, vfmaq_f32(vld1q_f32(bias), vcvtq_f32_s32(self.0), s));
            }
        }
    }
}

/// Bytes of quantized rows a task takes at a time, as for the f32 products.
const ROW_CHUNK_BYTES: usize = 64 << 10;

/// The largest tile, `MR x NR` over every kernel.
const MAX_TILE: usize = 6 * 64;

/// One product's operands, shared by the tasks that compute it.
struct QJob<'a> {
    rows: &'a QRows,
    weight: &'a QWeight,
    epilogue: Epilogue<'a>,
    /// `m` rows of `n` values, written by the tasks in disjoint tiles.
    y: *mut f32,
}

// SAFETY: tasks read the rows and the weight and write disjoint tiles of `y`
// (rows x panels, see `QJob::run`), so sharing the job races on nothing.
unsafe impl Sync for QJob<'_> {}

impl QJob<'_> {
    /// Computes rows `rows` (from a multiple of `MR`) of `y` over panels
    /// `panels`.
    ///
    /// # Safety
    /// The CPU runs `D`, `MR x NV * LANES` is the weight's kernel's tile,
    /// and no other task writes these rows and panels of `y`.
    #[inline(always)]
    unsafe fn run<D: Dot, const MR: usize, const NV: usize>(
        &self,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
    ) {
        let w = self.weight;
        let (n, groups) = (w.n, w.groups());
        let nr = NV * D::LANES;
        debug_assert_eq!((MR, nr), (w.kernel.mr(), w.kernel.nr()));
        debug_assert!(rows.start.is_multiple_of(MR) && MR * nr <= MAX_TILE);
        let q = self.rows;
        let mut scratch = [0.0f32; MAX_TILE];
        for p in panels {
            let panel = w.panels[p * groups * nr * 4..].as_ptr();
            let col = p * nr;
            let cols = nr.min(n - col);
            let columns = (w.colsum[col..].as_ptr(), w.scale[col..].as_ptr(), w.bias[col..].as_ptr());
            for r in (rows.start..rows.end).step_by(MR) {
                let count = MR.min(rows.end - r);
                let a = q.bytes[r * groups * 4..].as_ptr();
                let row_terms = (q.correction[r..].as_ptr(), q.step[r..].as_ptr());
                if count == MR && cols == nr {
                    // SAFETY: rows r..r+MR of the quantized tiles and y,
                    // columns col..col+NR of the panel and y, which are this
                    // task's.
                    unsafe {
                        let y = self.y.add(r * n + col);
                        tile::<D, MR, NV>(groups, a, panel, nr, row_terms, columns, y, n);
                        for i in 0..MR {
                            self.epilogue.apply(r + i, col, std::slice::from_raw_parts_mut(y.add(i * n), nr));
                        }
                    }
                } else {
                    // SAFETY: the quantized tiles are whole (zero-padded),
                    // the scratch MR x NR; only the real part reaches y.
                    let out = scratch.as_mut_ptr();
                    unsafe {
                        match cols.div_ceil(D::LANES) {
                            1 => tile::<D, MR, 1>(groups, a, panel, nr, row_terms, columns, out, nr),
                            2 if NV > 2 => {
                                tile::<D, MR, 2>(groups, a, panel, nr, row_terms, columns, out, nr)
                            }
                            3 if NV > 3 => {
                                tile::<D, MR, 3>(groups, a, panel, nr, row_terms, columns, out, nr)
                            }
                            _ => tile::<D, MR, NV>(groups, a, panel, nr, row_terms, columns, out, nr),
                        }
                    }
                    for i in 0..count {
                        let src = &mut scratch[i * nr..i * nr + cols];
                        self.epilogue.apply(r + i, col, src);
                        // SAFETY: row r + i, columns col..col + cols are this task's part of y.
                        unsafe {
                            std::ptr::copy_nonoverlapping(src.as_ptr(), self.y.add((r + i) * n + col), cols)
                        };
                    }
                }
            }
        }
    }

    /// The task's tiles on the weight's kernel.
    fn run_on_kernel(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        // SAFETY (all arms): a `QWeight` is made for detected kernels only
        // (`QKernel::available`), so the CPU has the instructions; the rows
        // and panels are this task's.
        match self.weight.kernel {
            #[cfg(target_arch = "x86_64")]
            QKernel::Avx512Vnni => unsafe { self.run_avx512_vnni(rows, panels) },
            #[cfg(target_arch = "x86_64")]
            QKernel::AvxVnni => unsafe { self.run_avx_vnni(rows, panels) },
            #[cfg(target_arch = "x86_64")]
            QKernel::Avx2 => unsafe { self.run_avx2(rows, panels) },
            #[cfg(target_arch = "aarch64")]
            QKernel::NeonDot => unsafe { self.run_neon_dot(rows, panels) },
            #[allow(unreachable_patterns)]
            other => unreachable!("kernel {} on another architecture", other.name()),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vnni,avx2,fma")]
    unsafe fn run_avx512_vnni(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { self.run::<x86::Vnni512, 6, 4>(rows, panels) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,avxvnni")]
    unsafe fn run_avx_vnni(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { self.run::<x86::AvxVnni, 6, 2>(rows, panels) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { self.run::<x86::Avx2, 4, 2>(rows, panels) }
    }

    #[cfg(target_arch = "aarch64")]
    #[target_feature(enable = "dotprod")]
    unsafe fn run_neon_dot(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { self.run::<arm::Sdot, 8, 3>(rows, panels) }
    }
}

/// `y = epilogue(x W + b)` for `x` of `m` rows of `K` and an int8 `W`, into
/// `y` (`m` rows of `N`), split across the current [`pool`].
pub fn qlinear(
    x: &[f32],
    weight: &QWeight,
    activation: super::linear::Activation,
    residual: Option<&[f32]>,
    y: &mut [f32],
) {
    let (k, n) = (weight.k, weight.n);
    assert!(k > 0 && x.len().is_multiple_of(k), "x is not rows of {k}");
    let m = x.len() / k;
    assert_eq!(y.len(), m * n, "y is not {m} rows of {n}");
    assert!(residual.is_none_or(|r| r.len() == m * n), "the residual is not {m} rows of {n}");
    if m == 0 || n == 0 {
        return;
    }
    let rows = QRows::quantize(weight.kernel, x, m, k);
    let job = QJob { rows: &rows, weight, epilogue: Epilogue { activation, residual, n }, y: y.as_mut_ptr() };
    let chunk = row_chunk(ROW_CHUNK_BYTES / (4 * weight.groups()), weight.kernel.mr());
    split_tiles(m, chunk, weight.panel_count(), |rows, panels| job.run_on_kernel(rows, panels));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::linear::{linear, Activation, PackedWeight, ODD_SHAPES};
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
