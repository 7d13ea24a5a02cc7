//! The f32 micro-kernel's register on aarch64: NEON.

use std::arch::aarch64::*;

use super::kernel::Lanes;

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
