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
//! ([`pool`]) in chunks of rows that stay in L2, times groups of panels.
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

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::Add;
use tract_onnx::tract_core::ops::nn::GeluExact;

use super::qlinear::{int8_columns, qlinear, QKernel, QWeight};
use super::softmax::exp_neg;
use super::{pool, sole_successor, splice};

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

/// Values from a 64-byte boundary, so that no load of a panel row (16 or 64
/// f32 for AVX2 and AVX-512, 64 bytes of int8) spans two cache lines: with
/// the 16-byte alignment of an allocation, three AVX-512 loads in four did,
/// at twice the cost.
#[derive(Clone, Debug)]
pub(super) struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

/// A type for which any bytes are a value, and zeros are zero.
pub(super) trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for i32 {}
impl Plain for i8 {}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl<T: Plain> Aligned<T> {
    pub(super) fn zeros(len: usize) -> Aligned<T> {
        let lines = vec![Line([0; 64]); (len * std::mem::size_of::<T>()).div_ceil(64)];
        Aligned { lines, len, _values: std::marker::PhantomData }
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines are 64 * lines.len() >= len * size_of T contiguous,
        // initialized bytes, 64-aligned, and any bytes are a `Plain` value.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

/// A `K x N` weight packed for one kernel, with its bias.
#[derive(Clone, Debug)]
pub struct PackedWeight {
    kernel: Kernel,
    k: usize,
    n: usize,
    /// `ceil(N / NR)` panels, each `K` rows of `NR` values.
    panels: Aligned<f32>,
    /// `N` values, zero-padded to whole panels.
    bias: Aligned<f32>,
}

impl PackedWeight {
    /// Packs `weight`, `K` rows of `N` values, and `bias` (`N` values, or
    /// none: zeros) for `kernel`.
    pub fn new(kernel: Kernel, weight: &[f32], k: usize, n: usize, bias: Option<&[f32]>) -> PackedWeight {
        assert_eq!(weight.len(), k * n, "the weight is not {k} x {n}");
        let mut packed = PackedWeight::from_rows(kernel, k, n, |row| &weight[row * n..][..n]);
        if let Some(bias) = bias {
            assert_eq!(bias.len(), n, "the bias is not {n} values");
            packed.bias[..n].copy_from_slice(bias);
        }
        packed
    }

    /// Packs the `K x N` weight whose value at row `row`, column `col` is
    /// `value(row, col)`, without a bias, for `kernel`.
    pub fn from_fn(kernel: Kernel, k: usize, n: usize, value: impl Fn(usize, usize) -> f32) -> PackedWeight {
        let mut packed = PackedWeight::zeros(kernel, k, n);
        let nr = kernel.nr();
        for (p, panel) in packed.panels.chunks_exact_mut(k * nr).enumerate() {
            let cols = nr.min(n - p * nr);
            for (row, dst) in panel.chunks_exact_mut(nr).enumerate() {
                for (c, dst) in dst[..cols].iter_mut().enumerate() {
                    *dst = value(row, p * nr + c);
                }
            }
        }
        packed
    }

    /// Packs the `K x N` weight whose column `col` (`K` values) is
    /// `column(col)`, times `scale`, without a bias: a transpose, as of the
    /// keys of attention.
    pub fn from_columns<'a>(
        kernel: Kernel,
        k: usize,
        n: usize,
        scale: f32,
        column: impl Fn(usize) -> &'a [f32],
    ) -> PackedWeight {
        let mut packed = PackedWeight::zeros(kernel, k, n);
        let nr = kernel.nr();
        for col in 0..n {
            let panel = &mut packed.panels[col / nr * k * nr..][..k * nr];
            for (dst, &v) in panel[col % nr..].iter_mut().step_by(nr).zip(&column(col)[..k]) {
                *dst = v * scale;
            }
        }
        packed
    }

    /// Packs the `K x N` weight whose row `row` (`N` values) is `row(row)`,
    /// without a bias.
    pub fn from_rows<'a>(
        kernel: Kernel,
        k: usize,
        n: usize,
        row: impl Fn(usize) -> &'a [f32],
    ) -> PackedWeight {
        let mut packed = PackedWeight::zeros(kernel, k, n);
        let nr = kernel.nr();
        for r in 0..k {
            let src = &row(r)[..n];
            for (p, chunk) in src.chunks(nr).enumerate() {
                packed.panels[(p * k + r) * nr..][..chunk.len()].copy_from_slice(chunk);
            }
        }
        packed
    }

    /// A `K x N` weight of zeros.
    fn zeros(kernel: Kernel, k: usize, n: usize) -> PackedWeight {
        let count = n.div_ceil(kernel.nr());
        PackedWeight {
            kernel,
            k,
            n,
            panels: Aligned::zeros(count * k * kernel.nr()),
            bias: Aligned::zeros(count * kernel.nr()),
        }
    }

    fn panel_count(&self) -> usize {
        self.n.div_ceil(self.kernel.nr())
    }
}

/// What is applied to each output after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    None,
    /// `x (1 + erf(x / sqrt 2)) / 2`, as ONNX's `Gelu` and its Erf expansion.
    Gelu,
}

/// `erf`, within 1.5e-7 of it everywhere (Abramowitz and Stegun 7.1.26,
/// with [`exp_neg`]); branch-free so that a loop over it vectorizes.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let p = 1.061_405_4;
    let p = p * t - 1.453_152;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_72;
    let p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp_neg(-z * z);
    y.copysign(x)
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn activate(activation: Activation, row: &mut [f32]) {
    if activation == Activation::Gelu {
        for v in row {
            *v = gelu(*v);
        }
    }
}

/// What a product's store applies to its sums: the activation, then the
/// residual.
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub activation: Activation,
    /// `m` rows of `n` values added last (a residual connection).
    pub residual: Option<&'a [f32]>,
    pub n: usize,
}

impl Epilogue<'_> {
    /// On `values`, row `row` of the output from column `col`.
    #[inline(always)]
    pub(super) fn apply(&self, row: usize, col: usize, values: &mut [f32]) {
        activate(self.activation, values);
        if let Some(residual) = self.residual {
            let len = values.len();
            for (v, &r) in values.iter_mut().zip(&residual[row * self.n + col..][..len]) {
                *v += r;
            }
        }
    }
}

/// One SIMD register of f32 as the micro-kernel uses it.
trait Lanes: Copy {
    const LANES: usize;
    /// # Safety
    /// The CPU has the instructions the implementation uses; so for all below.
    unsafe fn zero() -> Self;
    /// # Safety
    /// `p` is readable.
    unsafe fn splat(p: *const f32) -> Self;
    /// # Safety
    /// `p` is readable for `LANES` values.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p` is writable for `LANES` values.
    unsafe fn store(self, p: *mut f32);
    /// `self + a * b`.
    /// # Safety
    /// As for [`Lanes::zero`].
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
}

#[derive(Clone, Copy)]
struct Portable([f32; 8]);

impl Lanes for Portable {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 8])
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        // SAFETY: the caller's contract.
        Portable([unsafe { *p }; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's contract; `read_unaligned` takes any alignment.
        Portable(unsafe { (p as *const [f32; 8]).read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { (p as *mut [f32; 8]).write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn mul_add(mut self, a: Self, b: Self) -> Self {
        for ((s, a), b) in self.0.iter_mut().zip(a.0).zip(b.0) {
            *s += a * b;
        }
        self
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Lanes;

    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    impl Lanes for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: the caller's contract (AVX2).
            Avx2(unsafe { _mm256_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            // SAFETY: the caller's contract.
            Avx2(unsafe { _mm256_broadcast_ss(&*p) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller's contract; `loadu` takes any alignment.
            Avx2(unsafe { _mm256_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            // SAFETY: the caller's contract (FMA).
            Avx2(unsafe { _mm256_fmadd_ps(a.0, b.0, self.0) })
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    impl Lanes for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: the caller's contract (AVX-512F).
            Avx512(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            // SAFETY: the caller's contract.
            Avx512(unsafe { _mm512_set1_ps(*p) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller's contract; `loadu` takes any alignment.
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            // SAFETY: the caller's contract.
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, self.0) })
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::Lanes;

    #[derive(Clone, Copy)]
    pub(super) struct Neon(float32x4_t);

    impl Lanes for Neon {
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: NEON is part of aarch64.
            Neon(unsafe { vdupq_n_f32(0.0) })
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            // SAFETY: the caller's contract.
            Neon(unsafe { vld1q_dup_f32(p) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller's contract; `ld1` takes any alignment.
            Neon(unsafe { vld1q_f32(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { vst1q_f32(p, self.0) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            // SAFETY: NEON is part of aarch64.
            Neon(unsafe { vfmaq_f32(self.0, a.0, b.0) })
        }
    }
}

/// The largest tile, `MR x NR` over every kernel.
const MAX_TILE: usize = 6 * 64;

/// Bytes of activation rows a task takes at a time: the rows are read once
/// per weight panel, so they should stay in L2 (a Cortex-A76 has 512 KiB,
/// with the panels beside them).
const ROW_CHUNK_BYTES: usize = 256 << 10;

/// One product's operands, shared by the tasks that compute it.
struct Job<'a> {
    /// `m` rows of `k` values.
    x: &'a [f32],
    m: usize,
    weight: &'a PackedWeight,
    epilogue: Epilogue<'a>,
    /// `m` rows of `n` values, written by the tasks in disjoint tiles.
    y: *mut f32,
}

// SAFETY: tasks read `x` and the weight and write disjoint tiles of `y`
// (rows x panels, see `Job::run`), so sharing the job between threads races
// on nothing.
unsafe impl Sync for Job<'_> {}

/// Step `p` of a tile: row `p` of the panel times value `p` of each of the
/// `MR` rows, into the sums. A function rather than a closure, which the
/// compiler need not inline, and outside the caller's target features a
/// closure's intrinsics become calls (a product ran 50 times slower).
///
/// # Safety
/// As for [`tile`], and `p < k`.
#[inline(always)]
unsafe fn step<V: Lanes, const MR: usize, const NV: usize>(
    acc: &mut [[V; NV]; MR],
    x: *const f32,
    lda: usize,
    panel: *const f32,
    nr: usize,
    p: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let mut b = [V::zero(); NV];
        for (j, b) in b.iter_mut().enumerate() {
            *b = V::load(panel.add(p * nr + j * V::LANES));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let a = V::splat(x.add(i * lda + p));
            for (acc, &b) in row.iter_mut().zip(&b) {
                *acc = acc.mul_add(a, b);
            }
        }
    }
}

/// `MR` rows of `x` (`lda` apart, `K` values each) times the first `NV`
/// registers of each row of a panel (rows `nr` apart), plus the bias, stored
/// to `y` (`ldy` apart) as `MR` rows of `NV * LANES` values.
///
/// # Safety
/// The CPU runs `V`; `x` is readable for `MR` rows of `k`, `panel` for
/// `k x nr`, `bias` for `NV * LANES`, and `y` writable for `MR` rows of
/// `NV * LANES`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<V: Lanes, const MR: usize, const NV: usize>(
    k: usize,
    x: *const f32,
    lda: usize,
    panel: *const f32,
    nr: usize,
    bias: *const f32,
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: every access is inside the ranges the caller guarantees.
    unsafe {
        let mut acc = [[V::zero(); NV]; MR];
        for j in 0..NV {
            let b = V::load(bias.add(j * V::LANES));
            for row in acc.iter_mut() {
                row[j] = b;
            }
        }
        // Four steps at a time, so that each row's address is computed once
        // for four broadcasts: the loop is otherwise as much address
        // arithmetic as multiply-adds.
        let mut p = 0;
        while p + 4 <= k {
            for u in 0..4 {
                step(&mut acc, x, lda, panel, nr, p + u);
            }
            p += 4;
        }
        while p < k {
            step(&mut acc, x, lda, panel, nr, p);
            p += 1;
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, acc) in row.iter().enumerate() {
                acc.store(y.add(i * ldy + j * V::LANES));
            }
        }
    }
}

impl<'a> Job<'a> {
    /// The product of `x` and `weight` into `y`, or `None` when it is empty.
    fn new(
        x: &'a [f32],
        weight: &'a PackedWeight,
        activation: Activation,
        residual: Option<&'a [f32]>,
        y: &mut [f32],
    ) -> Option<Job<'a>> {
        let (k, n) = (weight.k, weight.n);
        assert!(k > 0 && x.len().is_multiple_of(k), "x is not rows of {k}");
        let m = x.len() / k;
        assert_eq!(y.len(), m * n, "y is not {m} rows of {n}");
        assert!(residual.is_none_or(|r| r.len() == m * n), "the residual is not {m} rows of {n}");
        let epilogue = Epilogue { activation, residual, n };
        (m > 0 && n > 0).then_some(Job { x, m, weight, epilogue, y: y.as_mut_ptr() })
    }

    /// Computes rows `rows` of `y` over panels `panels`.
    ///
    /// # Safety
    /// The CPU runs `V`, `MR x NV * LANES` is the weight's kernel's tile, and
    /// no other task writes these rows and panels of `y`.
    #[inline(always)]
    unsafe fn run<V: Lanes, const MR: usize, const NV: usize>(
        &self,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
    ) {
        let w = self.weight;
        let (k, n) = (w.k, w.n);
        let nr = NV * V::LANES;
        debug_assert_eq!((MR, nr), (w.kernel.mr(), w.kernel.nr()));
        debug_assert!(MR * nr <= MAX_TILE);
        // The last rows when fewer than MR, copied into MR zero-padded rows.
        let whole = rows.start + (rows.len() / MR) * MR;
        let mut tail = vec![0.0f32; if whole < rows.end { MR * k } else { 0 }];
        if !tail.is_empty() {
            tail[..(rows.end - whole) * k].copy_from_slice(&self.x[whole * k..rows.end * k]);
        }
        let mut scratch = [0.0f32; MAX_TILE];
        for p in panels {
            let panel = w.panels[p * k * nr..].as_ptr();
            let bias = w.bias[p * nr..].as_ptr();
            let col = p * nr;
            let cols = nr.min(n - col);
            for r in (rows.start..rows.end).step_by(MR) {
                let count = MR.min(rows.end - r);
                let x = if r < whole { self.x[r * k..].as_ptr() } else { tail.as_ptr() };
                if count == MR && cols == nr {
                    // SAFETY: the rows r..r+MR and columns col..col+NR are
                    // inside x, the panel and y, and y's are this task's.
                    unsafe {
                        let y = self.y.add(r * n + col);
                        tile::<V, MR, NV>(k, x, k, panel, nr, bias, y, n);
                        for i in 0..MR {
                            self.epilogue.apply(r + i, col, std::slice::from_raw_parts_mut(y.add(i * n), nr));
                        }
                    }
                } else {
                    // SAFETY: x has MR rows (the zero-padded tail when short),
                    // the scratch MR x NR; only the real part reaches y. A
                    // last panel with fewer columns takes only the registers
                    // that hold some (5 of 64 columns for 197 keys).
                    let out = scratch.as_mut_ptr();
                    unsafe {
                        match cols.div_ceil(V::LANES) {
                            1 => tile::<V, MR, 1>(k, x, k, panel, nr, bias, out, nr),
                            2 if NV > 2 => tile::<V, MR, 2>(k, x, k, panel, nr, bias, out, nr),
                            3 if NV > 3 => tile::<V, MR, 3>(k, x, k, panel, nr, bias, out, nr),
                            _ => tile::<V, MR, NV>(k, x, k, panel, nr, bias, out, nr),
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
        match self.weight.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `PackedWeight`s are made for detected kernels only
            // (`Kernel::available`), so the CPU has AVX-512F.
            Kernel::Avx512 => unsafe { self.run_avx512(rows, panels) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX2 and FMA.
            Kernel::Avx2 => unsafe { self.run_avx2(rows, panels) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of aarch64; the rows and panels are this task's.
            Kernel::Neon => unsafe { self.run::<arm::Neon, 8, 3>(rows, panels) },
            // SAFETY: plain Rust; the rows and panels are this task's.
            Kernel::Portable => unsafe { self.run::<Portable, 4, 2>(rows, panels) },
            #[allow(unreachable_patterns)]
            other => unreachable!("kernel {} on another architecture", other.name()),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { self.run::<x86::Avx512, 6, 4>(rows, panels) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { self.run::<x86::Avx2, 6, 2>(rows, panels) }
    }
}

/// `y = activation(x W + b) + residual` for `x` of `m` rows of `K`, into `y`
/// (`m` rows of `N`, as is the residual), split across the current [`pool`].
pub fn linear(
    x: &[f32],
    weight: &PackedWeight,
    activation: Activation,
    residual: Option<&[f32]>,
    y: &mut [f32],
) {
    let Some(job) = Job::new(x, weight, activation, residual, y) else { return };
    let chunk = row_chunk(ROW_CHUNK_BYTES / (4 * weight.k), weight.kernel.mr());
    split_tiles(job.m, chunk, weight.panel_count(), |rows, panels| job.run_on_kernel(rows, panels));
}

/// `rows` rounded up to whole tiles of `mr` rows, at least one.
pub(super) fn row_chunk(rows: usize, mr: usize) -> usize {
    rows.div_ceil(mr).max(1) * mr
}

/// Calls `task(rows, panels)` for the chunks of `chunk` rows of `m` (a
/// multiple of the tile's rows) times groups of the `panels` weight panels,
/// one group per thread of the current [`pool`]: each task reads its rows
/// once per panel while they stay in L2.
pub(super) fn split_tiles(
    m: usize,
    chunk: usize,
    panels: usize,
    task: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync,
) {
    let groups = panels.min(pool::threads());
    pool::for_each(m.div_ceil(chunk) * groups, |t| {
        let (r, g) = (t / groups, t % groups);
        task(r * chunk..((r + 1) * chunk).min(m), g * panels / groups..(g + 1) * panels / groups);
    });
}

/// [`linear`] on this thread alone, for ops that split their own work.
pub fn linear_here(x: &[f32], weight: &PackedWeight, activation: Activation, y: &mut [f32]) {
    if let Some(job) = Job::new(x, weight, activation, None, y) {
        job.run_on_kernel(0..job.m, 0..weight.panel_count());
    }
}

/// The plain product: `activation(x W + b)` in f64, `W` as `K` rows of `N`.
pub fn reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    k: usize,
    n: usize,
    activation: Activation,
) -> Vec<f64> {
    let m = x.len() / k;
    let mut y = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = bias.map_or(0.0, |b| b[j] as f64);
            for p in 0..k {
                sum += x[i * k + p] as f64 * w[p * n + j] as f64;
            }
            y[i * n + j] = match activation {
                Activation::None => sum,
                Activation::Gelu => 0.5 * sum * (1.0 + erf_f64(sum / std::f64::consts::SQRT_2)),
            };
        }
    }
    y
}

/// `erf` in f64 to about 1e-16 (its Maclaurin series near 0, the continued
/// fraction of erfc beyond), for the references.
fn erf_f64(x: f64) -> f64 {
    let z = x.abs();
    let value = if z < 2.5 {
        // erf z = 2/sqrt(pi) sum (-1)^n z^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, mut n) = (z, z, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -z * z / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc z = e^(-z^2) / sqrt(pi) * 1 / (z + (1/2) / (z + 1 / (z + (3/2) / (z + ...))))
        let mut fraction = z;
        for i in (1..60).rev() {
            fraction = z + (i as f64 / 2.0) / fraction;
        }
        1.0 - (-z * z).exp() / std::f64::consts::PI.sqrt() / fraction
    };
    value.copysign(x)
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

#[cfg(test)]
mod tests {
    use super::*;
    use edgevit_kernels::testing::XorShift;

    fn values(rng: &mut XorShift, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// Each kernel against the f64 reference. An f32 sum of `k + 1` terms
    /// (the bias first) is within `(k + 1) * 2^-24` of the sum of the terms'
    /// magnitudes of the exact one, whatever the order; GELU's slope is at
    /// most 1.13 and [`gelu`] adds its own 1e-6.
    fn check(
        kernel: Kernel,
        m: usize,
        k: usize,
        n: usize,
        bias: bool,
        activation: Activation,
        threads: usize,
    ) {
        let mut rng = XorShift::new((m * 1000 + k * 10 + n) as u64 | 1);
        let (x, w, b) = (values(&mut rng, m * k), values(&mut rng, k * n), values(&mut rng, n));
        let bias = bias.then_some(&b[..]);
        let packed = PackedWeight::new(kernel, &w, k, n, bias);
        let mut y = vec![f32::NAN; m * n];
        let pool = Arc::new(pool::Pool::new(threads).unwrap());
        pool.scope(|| linear(&x, &packed, activation, None, &mut y));
        let want = reference(&x, &w, bias, k, n, activation);
        for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
            let (row, col) = (i / n, i % n);
            let magnitude: f64 = bias.map_or(0.0, |b| b[col].abs() as f64)
                + (0..k).map(|p| (x[row * k + p] * w[p * n + col]).abs() as f64).sum::<f64>();
            let mut bound = (k + 1) as f64 * 5.97e-8 * magnitude;
            if activation == Activation::Gelu {
                bound = 1.13 * bound + 1e-6;
            }
            assert!(
                got.is_finite() && (got as f64 - want).abs() <= bound,
                "{} m {m} k {k} n {n} {activation:?} threads {threads}: y[{row}, {col}] = {got}, want {want}",
                kernel.name(),
            );
        }
    }

    #[test]
    fn every_kernel_matches_the_reference_on_odd_shapes() {
        for kernel in Kernel::available() {
            for (m, k, n) in ODD_SHAPES {
                for activation in [Activation::None, Activation::Gelu] {
                    check(kernel, m, k, n, true, activation, 1);
                }
                check(kernel, m, k, n, false, Activation::None, 1);
            }
        }
    }

    #[test]
    fn threads_split_rows_and_panels_without_changing_a_value() {
        for kernel in Kernel::available() {
            // One image's rows, and a batch of 8 (more row chunks than threads).
            for m in [197, 8 * 197] {
                check(kernel, m, 64, 200, true, Activation::Gelu, 3);
                let mut rng = XorShift::new(11);
                let (x, w) = (values(&mut rng, m * 64), values(&mut rng, 64 * 200));
                let packed = PackedWeight::new(kernel, &w, 64, 200, None);
                let (mut one, mut two) = (vec![0.0; m * 200], vec![0.0; m * 200]);
                let pool = Arc::new(pool::Pool::new(2).unwrap());
                linear(&x, &packed, Activation::None, None, &mut one);
                pool.scope(|| linear(&x, &packed, Activation::None, None, &mut two));
                assert_eq!(one, two, "{}: the split changed the sums", kernel.name());
            }
        }
    }

    #[test]
    fn the_residual_is_added_after_the_activation() {
        let (m, k, n) = (13, 20, 37);
        let mut rng = XorShift::new(21);
        let (x, w, r) = (values(&mut rng, m * k), values(&mut rng, k * n), values(&mut rng, m * n));
        for kernel in Kernel::available() {
            let packed = PackedWeight::new(kernel, &w, k, n, None);
            let (mut plain, mut with) = (vec![0.0; m * n], vec![0.0; m * n]);
            linear(&x, &packed, Activation::Gelu, None, &mut plain);
            linear(&x, &packed, Activation::Gelu, Some(&r), &mut with);
            let want: Vec<f32> = plain.iter().zip(&r).map(|(y, r)| y + r).collect();
            assert_eq!(with, want, "{}", kernel.name());
        }
    }

    #[test]
    fn gelu_is_within_its_stated_error() {
        let mut worst = 0.0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let want = 0.5 * x as f64 * (1.0 + erf_f64(x as f64 / std::f64::consts::SQRT_2));
            worst = worst.max((gelu(x) as f64 - want).abs());
        }
        assert!(worst < 1e-6, "worst absolute error {worst:e}");
        assert!((erf_f64(1.0) - 0.842_700_792_949_714_9).abs() < 1e-15);
        assert!((erf_f64(3.0) - 0.999_977_909_503_001_4).abs() < 1e-15);
        assert!(gelu(f32::NAN).is_nan());
        assert_eq!(gelu(-20.0), 0.0);
        assert_eq!(gelu(20.0), 20.0);
    }
}
