//! Activation rows quantized as they arrive, per row, into the tiles the
//! int8 micro-kernels read.

use crate::backend::cpu::pool;

#[cfg(target_arch = "aarch64")]
use super::arm;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::QKernel;

/// Activation rows quantized for one kernel.
pub(super) struct QRows {
    /// Tiles of `MR` rows (the last zero-padded), each `ceil(K / 4)` groups
    /// of `MR` rows of 4 bytes.
    pub(super) bytes: Vec<u8>,
    /// Per row: the step `a`, and `offset - z` (what multiplies the column
    /// sums to turn the stored bytes' sums into `sum (q - z) w`).
    pub(super) step: Vec<f32>,
    pub(super) correction: Vec<i32>,
}

/// How a row of activations is quantized: its step `a`, `1 / a`, and its
/// zero point `z`.
#[derive(Clone, Copy)]
pub(super) struct RowScale {
    pub(super) step: f32,
    pub(super) inv: f32,
    pub(super) zero: i32,
}

impl RowScale {
    /// The row whose values lie in `[lo, hi]` (`lo <= 0 <= hi`) in `levels` steps.
    #[inline(always)]
    pub(super) fn new(lo: f32, hi: f32, levels: i32) -> RowScale {
        let range = (hi - lo) / levels as f32;
        let step = if range > 0.0 && range.is_finite() { range } else { 1.0 };
        let inv = 1.0 / step;
        let zero = (-lo * inv).round_ties_even().clamp(0.0, levels as f32) as i32;
        RowScale { step, inv, zero }
    }

    /// `v` quantized, minus `offset`, as the kernel's byte.
    #[inline(always)]
    pub(super) fn byte(self, v: f32, levels: i32, offset: i32) -> u8 {
        (((v * self.inv).round_ties_even() as i32 + self.zero).clamp(0, levels) - offset) as u8
    }
}

/// Quantizes one row into `out` (`K` bytes, as the kernel stores them);
/// returns its step and correction. The SIMD quantizers of `x86` and `arm`
/// compute the same values (rounding to nearest even, as `cvtps2dq` and
/// `fcvtns` do).
pub(super) fn quantize_row(x: &[f32], levels: i32, offset: i32, out: &mut [u8]) -> (f32, i32) {
    let lo = x.iter().fold(0.0f32, |a, &b| a.min(b));
    let hi = x.iter().fold(0.0f32, |a, &b| a.max(b));
    let scale = RowScale::new(lo, hi, levels);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = scale.byte(v, levels, offset);
    }
    (scale.step, offset - scale.zero)
}

/// One row quantized on `kernel`'s CPU (see [`quantize_row`]).
fn quantize_row_on(kernel: QKernel, x: &[f32], out: &mut [u8]) -> (f32, i32) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `QWeight` is made for detected kernels only
        // (`QKernel::available`), and each x86 one needs AVX2; `out` is `x`'s length.
        QKernel::Avx512Vnni | QKernel::AvxVnni | QKernel::Avx2 => unsafe {
            x86::quantize_row_avx2(x, kernel.levels(), out)
        },
        #[cfg(target_arch = "aarch64")]
        QKernel::NeonDot => arm::quantize_row_neon(x, kernel.levels(), kernel.offset(), out),
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
    pub(super) fn quantize(kernel: QKernel, x: &[f32], m: usize, k: usize) -> QRows {
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
