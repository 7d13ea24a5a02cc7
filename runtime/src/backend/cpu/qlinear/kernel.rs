//! The int8 micro-kernel, generic over one register of int32 sums
//! ([`Dot`]), and a product's tiles on it.

use crate::backend::cpu::linear::{row_chunk, split_tiles, Activation, Epilogue};

#[cfg(target_arch = "aarch64")]
use super::arm;
use super::rows::QRows;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{QKernel, QWeight};

/// One register of int32 sums, as an int8 kernel uses it.
pub(super) trait Dot: Copy {
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
                        self.epilogue.apply_in_place(self.y, r, col, MR, nr);
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
                    // SAFETY: rows r..r + count, columns col..col + cols are this task's part of y.
                    unsafe { self.epilogue.apply_into(&mut scratch, nr, self.y, r, col, count, cols) };
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
/// `y` (`m` rows of `N`), split across the current
/// [`pool`](crate::backend::cpu::pool).
pub fn qlinear(x: &[f32], weight: &QWeight, activation: Activation, residual: Option<&[f32]>, y: &mut [f32]) {
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
