//! Camera and clip pixel formats to packed RGB8. The formulas are in the
//! [`source`](super) module docs.

use std::io::Cursor;

use anyhow::{bail, Context, Result};
use image::codecs::jpeg::JpegDecoder;
use image::{ColorType, DynamicImage, ImageDecoder};

/// Quantization range of YUV samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Range {
    /// Y in [16, 235], chroma in [16, 240].
    Limited,
    /// Y and chroma in [0, 255].
    Full,
}

/// 16.16 fixed-point factors: Y, Cr to R, Cb to G, Cr to G, Cb to B.
struct Matrix {
    y: i32,
    y_offset: i32,
    rv: i32,
    gu: i32,
    gv: i32,
    bu: i32,
}

const LIMITED: Matrix = Matrix { y: 76309, y_offset: 16, rv: 104597, gu: 25675, gv: 53279, bu: 132201 };
const FULL: Matrix = Matrix { y: 65536, y_offset: 0, rv: 91881, gu: 22554, gv: 46802, bu: 116130 };

impl Range {
    fn matrix(self) -> &'static Matrix {
        match self {
            Range::Limited => &LIMITED,
            Range::Full => &FULL,
        }
    }
}

#[inline(always)]
fn clamp8(v: i32) -> u8 {
    (v >> 16).clamp(0, 255) as u8
}

#[inline(always)]
fn pixel(m: &Matrix, y: u8, cb: u8, cr: u8, out: &mut [u8]) {
    let y = (y as i32 - m.y_offset) * m.y + (1 << 15);
    let (u, v) = (cb as i32 - 128, cr as i32 - 128);
    out[0] = clamp8(y + m.rv * v);
    out[1] = clamp8(y - m.gu * u - m.gv * v);
    out[2] = clamp8(y + m.bu * u);
}

/// Converts one YUYV (YUV 4:2:2, `Y0 Cb Y1 Cr` per pixel pair, the V4L2
/// `YUYV` format) frame to packed RGB8: BT.601 limited range, each chroma
/// pair shared by its two pixels (formula in the [module docs](super)).
///
/// `src` holds `height` rows of `2 * width` bytes without padding, `dst`
/// receives `3 * width * height` bytes. Panics if `width` is odd or a buffer
/// has the wrong length.
pub fn yuyv_to_rgb(src: &[u8], width: u32, height: u32, dst: &mut [u8]) {
    let (w, h) = (width as usize, height as usize);
    assert!(w % 2 == 0, "YUYV width {w} is odd");
    assert_eq!(src.len(), w * h * 2, "YUYV buffer does not match {w}x{h}");
    assert_eq!(dst.len(), w * h * 3, "RGB buffer does not match {w}x{h}");
    let m = &LIMITED;
    for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
        pixel(m, s[0], s[1], s[3], &mut d[..3]);
        pixel(m, s[2], s[1], s[3], &mut d[3..]);
    }
}

/// Converts planar YUV to packed RGB8. Chroma planes are
/// `ceil(width / sx) x ceil(height / sy)`; `sx`, `sy` are 1 or 2.
pub(crate) fn planar_to_rgb(
    planes: [&[u8]; 3],
    width: u32,
    height: u32,
    (sx, sy): (usize, usize),
    range: Range,
    dst: &mut [u8],
) {
    let (w, h) = (width as usize, height as usize);
    let (cw, ch) = (w.div_ceil(sx), h.div_ceil(sy));
    let [y, u, v] = planes;
    assert_eq!(y.len(), w * h, "Y plane does not match {w}x{h}");
    assert!(u.len() == cw * ch && v.len() == cw * ch, "chroma planes do not match {cw}x{ch}");
    assert_eq!(dst.len(), w * h * 3, "RGB buffer does not match {w}x{h}");
    let m = range.matrix();
    for row in 0..h {
        let yr = &y[row * w..][..w];
        let c = (row / sy) * cw;
        let (ur, vr) = (&u[c..c + cw], &v[c..c + cw]);
        let out = &mut dst[row * w * 3..][..w * 3];
        for (x, (&yv, d)) in yr.iter().zip(out.chunks_exact_mut(3)).enumerate() {
            pixel(m, yv, ur[x / sx], vr[x / sx], d);
        }
    }
}

/// Converts planar YUV 4:2:0 (`I420`: Y, then Cb and Cr planes of
/// `ceil(width / 2) x ceil(height / 2)`) to packed RGB8: BT.601 limited range,
/// nearest-neighbour chroma (formula in the [module docs](super)). Panics on
/// wrong buffer lengths.
#[cfg(test)]
pub fn yuv420p_to_rgb(y: &[u8], u: &[u8], v: &[u8], width: u32, height: u32, dst: &mut [u8]) {
    planar_to_rgb([y, u, v], width, height, (2, 2), Range::Limited, dst);
}

/// Decodes one MJPEG frame (a JPEG image, Huffman tables optional as in
/// AVI1 MJPEG) that must be `width x height` into packed RGB8 (`dst` holds
/// `3 * width * height` bytes). JPEG carries full-range YCbCr; the decoder
/// (`image`'s, on zune-jpeg) converts it and upsamples subsampled chroma
/// with libjpeg's "fancy" filter (linear, weights 3/4 and 1/4).
///
/// The decoder fills a cut-off frame with grey instead of failing, so a frame
/// that does not end in an EOI marker (trailing zero padding allowed) is
/// refused: a half-grey frame must not reach the classifier.
pub fn mjpeg_to_rgb(src: &[u8], width: u32, height: u32, dst: &mut [u8]) -> Result<()> {
    let (w, h) = (width as usize, height as usize);
    assert_eq!(dst.len(), w * h * 3, "RGB buffer does not match {w}x{h}");
    let end = src.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if !src[..end].ends_with(&[0xFF, 0xD9]) {
        bail!("expected an MJPEG frame ending in an EOI marker, but it is cut off after {} bytes", src.len());
    }
    let decoder = JpegDecoder::new(Cursor::new(src)).context("expected an MJPEG frame")?;
    let (fw, fh) = decoder.dimensions();
    if (fw, fh) != (width, height) {
        bail!("expected a {width}x{height} MJPEG frame but it is {fw}x{fh}");
    }
    if decoder.color_type() == ColorType::Rgb8 {
        decoder.read_image(dst).context("expected an MJPEG frame")?;
    } else {
        let img = DynamicImage::from_decoder(decoder).context("expected an MJPEG frame")?;
        dst.copy_from_slice(img.to_rgb8().as_raw());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Max absolute difference and its index.
    fn worst(a: &[u8], b: &[u8]) -> (u8, usize) {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).enumerate().map(|(i, (x, y))| (x.abs_diff(*y), i)).max().unwrap_or((0, 0))
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../tests/data/capture/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The exact formula in f64, for the reference points below.
    fn exact(y: u8, cb: u8, cr: u8) -> [f64; 3] {
        let (y, u, v) = (1.164383 * (y as f64 - 16.0), cb as f64 - 128.0, cr as f64 - 128.0);
        [y + 1.596027 * v, y - 0.391762 * u - 0.812968 * v, y + 2.017232 * u]
    }

    #[test]
    fn fixed_point_matches_the_formula_everywhere() {
        let mut out = [0u8; 3];
        for y in (0..=255).step_by(3) {
            for cb in (0..=255).step_by(5) {
                for cr in (0..=255).step_by(7) {
                    pixel(&LIMITED, y, cb, cr, &mut out);
                    let e = exact(y, cb, cr);
                    for c in 0..3 {
                        let want = e[c].round().clamp(0.0, 255.0);
                        assert!((out[c] as f64 - want).abs() <= 1.0, "{y} {cb} {cr}: {out:?} vs {e:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn reference_colours() {
        let mut out = [0u8; 3];
        // Black, white and the 100% primaries of BT.601 limited range.
        for ((y, cb, cr), rgb) in [
            ((16, 128, 128), [0, 0, 0]),
            ((235, 128, 128), [255, 255, 255]),
            ((81, 90, 240), [255, 0, 0]),
            ((145, 54, 34), [0, 255, 0]),
            ((41, 240, 110), [0, 0, 255]),
        ] {
            pixel(&LIMITED, y, cb, cr, &mut out);
            assert!(worst(&out, &rgb).0 <= 1, "{y} {cb} {cr}: {out:?} vs {rgb:?}");
        }
        pixel(&FULL, 128, 128, 128, &mut out);
        assert_eq!(out, [128, 128, 128]);
        pixel(&FULL, 255, 128, 128, &mut out);
        assert_eq!(out, [255, 255, 255]);
    }

    #[test]
    fn yuyv_pairs_share_chroma() {
        // Two pixel pairs: (Y0=16, Y1=235) grey chroma, then pure red twice.
        let src = [16, 128, 235, 128, 81, 90, 81, 240];
        let mut dst = [0u8; 12];
        yuyv_to_rgb(&src, 4, 1, &mut dst);
        assert_eq!(&dst[..6], &[0, 0, 0, 255, 255, 255]);
        assert_eq!(dst[6..9], dst[9..12]);
        assert!(dst[6] >= 254 && dst[7] <= 1 && dst[8] <= 1, "{dst:?}");
    }

    /// FFmpeg's unscaled YUV to RGB converters use table-driven arithmetic
    /// with coarser coefficients than ours (measured: at most 3 levels apart
    /// on these fixtures, no systematic bias); anything beyond that is a bug
    /// (swapped chroma, wrong siting, wrong range).
    const YUV_TOLERANCE: u8 = 3;

    #[test]
    fn yuyv_matches_ffmpeg() {
        let src = fixture("frame-64x48.yuyv");
        let want = fixture("frame-64x48.yuyv.rgb");
        let mut dst = vec![0; 64 * 48 * 3];
        yuyv_to_rgb(&src, 64, 48, &mut dst);
        let (d, i) = worst(&dst, &want);
        assert!(d <= YUV_TOLERANCE, "64x48 YUYV: worst at byte {i}: ours {} ffmpeg {}", dst[i], want[i]);
    }

    /// MJPEG against FFmpeg's decode with the same chroma filter
    /// (`-sws_flags bilinear+full_chroma_int+accurate_rnd`, which is libjpeg's
    /// fancy upsampling for centred 4:2:2 chroma). Left: IDCT and colour
    /// conversion rounding, measured at most 3 levels (mean 0.26).
    const MJPEG_TOLERANCE: u8 = 3;

    #[test]
    fn mjpeg_matches_ffmpeg() {
        let src = fixture("frame-64x48.mjpeg");
        let want = fixture("frame-64x48.mjpeg.rgb");
        let mut dst = vec![0; 64 * 48 * 3];
        mjpeg_to_rgb(&src, 64, 48, &mut dst).unwrap();
        let (d, i) = worst(&dst, &want);
        assert!(d <= MJPEG_TOLERANCE, "64x48 MJPEG: worst at byte {i}: ours {} ffmpeg {}", dst[i], want[i]);
        // Zero padding after the EOI marker, as some cameras send, is fine.
        let mut padded = src.clone();
        padded.resize(src.len() + 100, 0);
        let mut again = vec![0; 64 * 48 * 3];
        mjpeg_to_rgb(&padded, 64, 48, &mut again).unwrap();
        assert_eq!(again, dst);
    }

    #[test]
    fn mjpeg_rejects_garbage_and_wrong_sizes() {
        let mut dst = vec![0; 64 * 48 * 3];
        let err = mjpeg_to_rgb(b"not a jpeg\xff\xd9", 64, 48, &mut dst).unwrap_err();
        assert!(format!("{err:#}").starts_with("expected an MJPEG frame: "), "{err:#}");
        let src = fixture("frame-64x48.mjpeg");
        let mut small = vec![0; 32 * 24 * 3];
        let err = mjpeg_to_rgb(&src, 32, 24, &mut small).unwrap_err();
        assert_eq!(format!("{err:#}"), "expected a 32x24 MJPEG frame but it is 64x48");
        let err = mjpeg_to_rgb(&src[..src.len() / 3], 64, 48, &mut dst).unwrap_err();
        let want = format!(
            "expected an MJPEG frame ending in an EOI marker, but it is cut off after {} bytes",
            src.len() / 3
        );
        assert_eq!(format!("{err:#}"), want);
    }

    #[test]
    fn odd_sizes_take_the_last_chroma_sample() {
        // 3x3 4:2:0: chroma planes are 2x2; pixel (2, 2) uses chroma (1, 1).
        let y = [235u8; 9];
        let u = [128, 128, 128, 90];
        let v = [128, 128, 128, 240];
        let mut dst = [0u8; 27];
        yuv420p_to_rgb(&y, &u, &v, 3, 3, &mut dst);
        assert_eq!(&dst[..3], &[255, 255, 255]);
        let last = &dst[24..];
        assert!(last[0] == 255 && last[1] < 200, "{last:?}");
    }
}
