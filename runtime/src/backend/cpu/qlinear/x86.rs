//! The int8 kernels on x86_64: AVX-512 VNNI, AVX-VNNI and AVX2, and the
//! AVX2 activation quantizer they share.

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::kernel::Dot;
use super::rows::RowScale;

/// [`quantize_row`](super::rows::quantize_row) on AVX2, 32 values at a
/// time, for the unsigned kernels.
///
/// # Safety
/// The CPU has AVX2; `out` is at least as long as `x`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_row_avx2(x: &[f32], levels: i32, out: &mut [u8]) -> (f32, i32) {
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
    unsafe fn step<const MR: usize, const NV: usize>(acc: &mut [[Self; NV]; MR], a: *const u8, w: *const i8) {
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
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))) }
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
