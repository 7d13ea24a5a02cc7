//! The f32 micro-kernel, generic over one SIMD register ([`Lanes`]), and
//! how a product's tiles are split across the threads of the [`pool`].

use crate::backend::cpu::pool;

#[cfg(target_arch = "aarch64")]
use super::arm;
#[cfg(test)]
use super::epilogue::erf_f64;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Activation, Epilogue, Kernel, PackedWeight};

/// One SIMD register of f32 as the micro-kernel uses it.
pub(super) trait Lanes: Copy {
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
                        self.epilogue.apply_in_place(self.y, r, col, MR, nr);
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
                    // SAFETY: rows r..r + count, columns col..col + cols are this task's part of y.
                    unsafe { self.epilogue.apply_into(&mut scratch, nr, self.y, r, col, count, cols) };
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
pub(in crate::backend::cpu) fn row_chunk(rows: usize, mr: usize) -> usize {
    rows.div_ceil(mr).max(1) * mr
}

/// Calls `task(rows, panels)` for the chunks of `chunk` rows of `m` (a
/// multiple of the tile's rows) times groups of the `panels` weight panels,
/// one group per thread of the current [`pool`]: each task reads its rows
/// once per panel while they stay in L2.
pub(in crate::backend::cpu) fn split_tiles(
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
#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::ODD_SHAPES;
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
}
