//! What a product's store applies to its sums: GELU, then the residual;
//! and the f64 `erf` of the references.

use crate::backend::cpu::softmax::exp_neg;

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
pub(in crate::backend::cpu) struct Epilogue<'a> {
    pub activation: Activation,
    /// `m` rows of `n` values added last (a residual connection).
    pub residual: Option<&'a [f32]>,
    pub n: usize,
}

impl Epilogue<'_> {
    /// On `values`, row `row` of the output from column `col`.
    #[inline(always)]
    pub(in crate::backend::cpu) fn apply(&self, row: usize, col: usize, values: &mut [f32]) {
        activate(self.activation, values);
        if let Some(residual) = self.residual {
            let len = values.len();
            for (v, &r) in values.iter_mut().zip(&residual[row * self.n + col..][..len]) {
                *v += r;
            }
        }
    }

    /// On the `rows x cols` tile of `y` (the output, rows `n` apart) at
    /// row `row`, column `col`, in place.
    ///
    /// # Safety
    ///
    /// The tile lies inside `y`, and no other thread touches it.
    #[inline(always)]
    pub(in crate::backend::cpu) unsafe fn apply_in_place(
        &self,
        y: *mut f32,
        row: usize,
        col: usize,
        rows: usize,
        cols: usize,
    ) {
        for i in 0..rows {
            // SAFETY: the caller's: the row's part of the tile is inside y and ours.
            let values = unsafe { std::slice::from_raw_parts_mut(y.add((row + i) * self.n + col), cols) };
            self.apply(row + i, col, values);
        }
    }

    /// On the first `rows x cols` of `tile` (rows `ld` apart), then copied
    /// into `y` (the output) at row `row`, column `col`: the store of a
    /// tile computed aside because it overhangs the output.
    ///
    /// # Safety
    ///
    /// As [`Epilogue::apply_in_place`], for the copy's destination.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(in crate::backend::cpu) unsafe fn apply_into(
        &self,
        tile: &mut [f32],
        ld: usize,
        y: *mut f32,
        row: usize,
        col: usize,
        rows: usize,
        cols: usize,
    ) {
        for i in 0..rows {
            let values = &mut tile[i * ld..i * ld + cols];
            self.apply(row + i, col, values);
            // SAFETY: the caller's: the row's part of the tile is inside y and ours.
            unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), y.add((row + i) * self.n + col), cols) };
        }
    }
}

/// `erf` in f64 to about 1e-16 (its Maclaurin series near 0, the continued
/// fraction of erfc beyond), for the references.
#[cfg(test)]
pub(super) fn erf_f64(x: f64) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
