//! The weight of an f32 product packed once, at load, into the panels the
//! micro-kernels read, in memory aligned to cache lines.

use super::Kernel;

/// Values from a 64-byte boundary, so that no load of a panel row (16 or 64
/// f32 for AVX2 and AVX-512, 64 bytes of int8) spans two cache lines: with
/// the 16-byte alignment of an allocation, three AVX-512 loads in four did,
/// at twice the cost.
#[derive(Clone, Debug)]
pub(in crate::backend::cpu) struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

/// A type for which any bytes are a value, and zeros are zero.
pub(in crate::backend::cpu) trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for i32 {}
impl Plain for i8 {}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl<T: Plain> Aligned<T> {
    pub(in crate::backend::cpu) fn zeros(len: usize) -> Aligned<T> {
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
    pub(super) kernel: Kernel,
    pub(super) k: usize,
    pub(super) n: usize,
    /// `ceil(N / NR)` panels, each `K` rows of `NR` values.
    pub(super) panels: Aligned<f32>,
    /// `N` values, zero-padded to whole panels.
    pub(super) bias: Aligned<f32>,
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

    pub(super) fn panel_count(&self) -> usize {
        self.n.div_ceil(self.kernel.nr())
    }
}
