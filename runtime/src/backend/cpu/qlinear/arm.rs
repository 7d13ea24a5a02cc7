//! The int8 kernel on aarch64, the dot product (`sdot`), and its NEON
//! activation quantizer.

use std::arch::aarch64::*;
use std::arch::asm;

use super::kernel::Dot;
use super::rows::RowScale;

/// [`quantize_row`](super::rows::quantize_row) on NEON, 8 values at a
/// time, for the signed kernel.
pub(super) fn quantize_row_neon(x: &[f32], levels: i32, offset: i32, out: &mut [u8]) -> (f32, i32) {
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
    unsafe fn step<const MR: usize, const NV: usize>(acc: &mut [[Self; NV]; MR], a: *const u8, w: *const i8) {
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
