//! Named tolerance tiers for comparing a kernel's output with its f64 reference.
//!
//! A parity test names the tier its kernel is held to instead of an inline
//! epsilon. An element passes when
//!
//! ```text
//! |actual - expected| <= absolute + relative * |expected|
//! ```
//!
//! and a non-finite `actual` never passes.

use std::fmt;

/// How closely a kernel's output must match its f64 reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tolerance {
    /// Identical values (`0.0` and `-0.0` count as equal): integer-valued or
    /// pure data-movement kernels.
    Exact,
    /// fp32 arithmetic through the fast transcendental functions (`exp2f`,
    /// `log2f`, a few ulp each): relative 1e-4, absolute 1e-12.
    Close,
    /// fp16 storage of an fp32 result: relative 1e-3 (two fp16 roundings'
    /// worth, 2^-11 each), absolute 2^-24, one fp16 subnormal step, so that
    /// outputs in fp16's subnormal range (GGeM's eps = 1e-6 among them) are
    /// judged by their spacing.
    Approximate,
}

impl Tolerance {
    /// The relative part of the allowed error.
    pub const fn relative(self) -> f64 {
        match self {
            Tolerance::Exact => 0.0,
            Tolerance::Close => 1e-4,
            Tolerance::Approximate => 1e-3,
        }
    }

    /// The absolute part of the allowed error.
    pub const fn absolute(self) -> f64 {
        match self {
            Tolerance::Exact => 0.0,
            Tolerance::Close => 1e-12,
            // 2^-24
            Tolerance::Approximate => 5.960_464_477_539_063e-8,
        }
    }

    /// The largest error allowed for an element whose reference is `expected`.
    pub fn allowed(self, expected: f64) -> f64 {
        self.absolute() + self.relative() * expected.abs()
    }

    /// Whether `actual` is within this tier of `expected`.
    pub fn accepts(self, actual: f64, expected: f64) -> bool {
        actual.is_finite() && (actual - expected).abs() <= self.allowed(expected)
    }

    /// Compares `actual` with `expected` element by element. `shape` is the
    /// logical shape of both (row-major) and only serves the report.
    ///
    /// On failure the error names the shape, the worst element (flat index,
    /// multi-index, both values) and how many elements are out of tolerance.
    /// A NaN or infinity in `actual` is always the worst element.
    pub fn check(self, actual: &[f64], expected: &[f64], shape: &[usize]) -> Result<(), ToleranceError> {
        let len: usize = shape.iter().product();
        if actual.len() != len || expected.len() != len {
            return Err(ToleranceError::Length {
                shape: shape.to_vec(),
                expected_len: len,
                actual: actual.len(),
                reference: expected.len(),
            });
        }
        if let Some(index) = expected.iter().position(|e| !e.is_finite()) {
            return Err(ToleranceError::NonFiniteReference {
                shape: shape.to_vec(),
                index: multi_index(index, shape),
                value: expected[index],
            });
        }

        // Score each element by its error over the allowed error; a
        // non-finite actual scores infinity.
        let mut worst: Option<(usize, f64)> = None;
        let mut failed = 0usize;
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            if self.accepts(a, e) {
                continue;
            }
            failed += 1;
            let score = if a.is_finite() { (a - e).abs() / self.allowed(e) } else { f64::INFINITY };
            if worst.is_none_or(|(_, w)| score > w) {
                worst = Some((i, score));
            }
        }
        match worst {
            None => Ok(()),
            Some((i, _)) => Err(ToleranceError::Mismatch(Box::new(Mismatch {
                tolerance: self,
                shape: shape.to_vec(),
                flat_index: i,
                index: multi_index(i, shape),
                actual: actual[i],
                expected: expected[i],
                failed,
            }))),
        }
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} (relative {:e}, absolute {:e})", self, self.relative(), self.absolute())
    }
}

/// The worst element of a failed comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub tolerance: Tolerance,
    pub shape: Vec<usize>,
    pub flat_index: usize,
    pub index: Vec<usize>,
    pub actual: f64,
    pub expected: f64,
    /// How many elements are out of tolerance.
    pub failed: usize,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: usize = self.shape.iter().product();
        write!(
            f,
            "shape {:?}: {} of {} elements outside {}; worst is element {} {:?}: actual {:e}, expected {:e}",
            self.shape,
            self.failed,
            total,
            self.tolerance,
            self.flat_index,
            self.index,
            self.actual,
            self.expected,
        )?;
        if self.actual.is_finite() {
            write!(
                f,
                ", |diff| {:e} > allowed {:e}",
                (self.actual - self.expected).abs(),
                self.tolerance.allowed(self.expected)
            )?;
        }
        Ok(())
    }
}

/// Why a comparison failed.
#[derive(Debug, thiserror::Error)]
pub enum ToleranceError {
    #[error("shape {shape:?} expected {expected_len} elements but the output has {actual} and the reference {reference}")]
    Length { shape: Vec<usize>, expected_len: usize, actual: usize, reference: usize },
    #[error("shape {shape:?}: the reference is not finite at {index:?} ({value})")]
    NonFiniteReference { shape: Vec<usize>, index: Vec<usize>, value: f64 },
    #[error("{0}")]
    Mismatch(Box<Mismatch>),
}

fn multi_index(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        *slot = flat % dim.max(1);
        flat /= dim.max(1);
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_ordered() {
        assert!(Tolerance::Exact.allowed(1.0) < Tolerance::Close.allowed(1.0));
        assert!(Tolerance::Close.allowed(1.0) < Tolerance::Approximate.allowed(1.0));
        assert_eq!(Tolerance::Approximate.absolute(), 2f64.powi(-24));
    }

    #[test]
    fn exact_accepts_only_equal_values() {
        assert!(Tolerance::Exact.accepts(0.0, -0.0));
        assert!(Tolerance::Exact.accepts(1.5, 1.5));
        assert!(!Tolerance::Exact.accepts(1.5, 1.5 + f64::EPSILON * 2.0));
    }

    #[test]
    fn non_finite_never_passes() {
        for tier in [Tolerance::Exact, Tolerance::Close, Tolerance::Approximate] {
            assert!(!tier.accepts(f64::NAN, 1.0));
            assert!(!tier.accepts(f64::INFINITY, 1.0));
        }
    }

    #[test]
    fn fp16_subnormal_rounding_of_eps_is_approximate() {
        // 1e-6 stored as fp16 is 17 subnormal steps of 2^-24.
        let stored = 17.0 * 2f64.powi(-24);
        assert!(Tolerance::Approximate.accepts(stored, 1e-6));
        assert!(!Tolerance::Close.accepts(stored, 1e-6));
    }

    #[test]
    fn report_names_shape_worst_element_and_values() {
        let expected = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut actual = expected;
        actual[1] = 2.001;
        actual[4] = 5.1;
        let err = Tolerance::Close.check(&actual, &expected, &[2, 3]).unwrap_err();
        let ToleranceError::Mismatch(m) = &err else {
            panic!("unexpected error {err}");
        };
        assert_eq!((m.flat_index, m.index.as_slice()), (4, &[1, 1][..]));
        assert_eq!((m.actual, m.expected, m.failed), (5.1, 5.0, 2));
        let text = err.to_string();
        assert!(text.contains("shape [2, 3]"), "{text}");
        assert!(text.contains("[1, 1]"), "{text}");
        assert!(text.contains("actual 5.1e0, expected 5e0"), "{text}");
    }

    #[test]
    fn nan_is_the_worst_element() {
        let expected = [1.0, 2.0, 3.0];
        let actual = [1.5, f64::NAN, 3.0];
        let err = Tolerance::Approximate.check(&actual, &expected, &[3]).unwrap_err();
        let ToleranceError::Mismatch(m) = err else {
            panic!("expected a mismatch");
        };
        assert_eq!(m.flat_index, 1);
        assert!(m.actual.is_nan());
    }

    #[test]
    fn length_mismatch_is_reported() {
        let err = Tolerance::Exact.check(&[1.0], &[1.0, 2.0], &[2]).unwrap_err();
        assert!(matches!(err, ToleranceError::Length { .. }), "{err}");
    }
}
