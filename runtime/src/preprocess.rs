//! Image to model input: decode, channel conversion, resize and center crop,
//! normalization, in one pass with no temporaries.
//!
//! The geometry follows "resize to cover, then center crop": the image is
//! scaled by `s = max(W / w, H / h)` so it covers the `W x H` input, and the
//! center `W x H` window is sampled bilinearly with half-pixel centers:
//! `src = (dst + 0.5 + offset) / s - 0.5`, clamped to the image. Luma from RGB
//! is `0.299 R + 0.587 G + 0.114 B`. Values become `(v / 255 - mean) / std`.
//! `models/export/preprocess.py` is the same algorithm in numpy; the golden
//! tensors under `tests/data/preprocess/` hold the two together.

use std::io::Cursor;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageReader, Limits};

use crate::manifest::{InputSpec, Layout};

/// Largest image side accepted from a file.
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// Most bytes a decoder may allocate for one image.
pub const MAX_IMAGE_ALLOC: u64 = 512 << 20;
/// Largest image file read: a 16384 x 16384 JPEG at high quality fits.
pub const MAX_IMAGE_FILE_BYTES: u64 = 128 << 20;

/// Pixel layout of an 8-bit frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    Gray8,
    Rgb8,
}

impl PixelFormat {
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Gray8 => 1,
            PixelFormat::Rgb8 => 3,
        }
    }
}

/// A borrowed 8-bit image, rows packed without padding.
#[derive(Clone, Copy, Debug)]
pub struct ImageView<'a> {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    pub data: &'a [u8],
}

/// An owned 8-bit image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    pub data: Vec<u8>,
}

impl Image {
    pub fn view(&self) -> ImageView<'_> {
        ImageView { width: self.width, height: self.height, format: self.format, data: &self.data }
    }

    /// Decodes PNG or JPEG bytes (format sniffed from the content), refusing
    /// dimensions or allocations past the limits before allocating.
    pub fn decode(bytes: &[u8]) -> Result<Image> {
        if bytes.is_empty() {
            bail!("expected a PNG or JPEG image but the file is empty");
        }
        let mut reader = ImageReader::new(Cursor::new(bytes));
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        limits.max_alloc = Some(MAX_IMAGE_ALLOC);
        reader.limits(limits);
        let reader = reader.with_guessed_format().context("cannot read image")?;
        if reader.format().is_none() {
            bail!("expected a PNG or JPEG image but the content is neither");
        }
        let decoded = reader.decode().map_err(|e| anyhow::anyhow!("expected a PNG or JPEG image but {e}"))?;
        Ok(Image::from_dynamic(decoded))
    }

    /// Reads and decodes an image file.
    pub fn open(path: &Path) -> Result<Image> {
        let bytes = crate::fsutil::read_regular(path, MAX_IMAGE_FILE_BYTES, "image")?;
        Image::decode(&bytes).with_context(|| format!("image {}", path.display()))
    }

    fn from_dynamic(img: DynamicImage) -> Image {
        let (width, height) = (img.width(), img.height());
        match img {
            DynamicImage::ImageLuma8(g) => {
                Image { width, height, format: PixelFormat::Gray8, data: g.into_raw() }
            }
            DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => {
                Image { width, height, format: PixelFormat::Gray8, data: img.to_luma8().into_raw() }
            }
            other => Image { width, height, format: PixelFormat::Rgb8, data: other.to_rgb8().into_raw() },
        }
    }
}

/// Fills `out` (exactly `spec.len()` values, in `spec.layout`) from `img`.
pub fn preprocess(spec: &InputSpec, img: ImageView<'_>, out: &mut [f32]) {
    let (w, h) = (img.width as usize, img.height as usize);
    let (ow, oh, oc) = (spec.width as usize, spec.height as usize, spec.channels as usize);
    let ic = img.format.channels();
    assert_eq!(out.len(), ow * oh * oc, "output buffer does not match the input spec");
    assert_eq!(img.data.len(), w * h * ic, "image buffer does not match its dimensions");
    assert!(w > 0 && h > 0, "empty image");

    let s = (ow as f32 / w as f32).max(oh as f32 / h as f32);
    let off_x = (w as f32 * s - ow as f32) / 2.0;
    let off_y = (h as f32 * s - oh as f32) / 2.0;
    let mean: [f32; 3] = std::array::from_fn(|c| spec.mean.get(c).copied().unwrap_or(0.0));
    let std: [f32; 3] = std::array::from_fn(|c| spec.std.get(c).copied().unwrap_or(1.0));
    let px = |x: usize, y: usize| -> [f32; 3] {
        let i = (y * w + x) * ic;
        let d = &img.data[i..i + ic];
        if ic == 3 {
            [d[0] as f32, d[1] as f32, d[2] as f32]
        } else {
            [d[0] as f32; 3]
        }
    };
    let axis = |dst: usize, off: f32, len: usize| -> (usize, usize, f32) {
        let src = ((dst as f32 + 0.5 + off) / s - 0.5).clamp(0.0, (len - 1) as f32);
        let i0 = src.floor() as usize;
        (i0, (i0 + 1).min(len - 1), src - i0 as f32)
    };
    for oy in 0..oh {
        let (y0, y1, fy) = axis(oy, off_y, h);
        for ox in 0..ow {
            let (x0, x1, fx) = axis(ox, off_x, w);
            let (a, b, c, d) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
            let v: [f32; 3] = std::array::from_fn(|k| {
                (a[k] * (1.0 - fx) + b[k] * fx) * (1.0 - fy) + (c[k] * (1.0 - fx) + d[k] * fx) * fy
            });
            let values =
                if oc == 1 && ic == 3 { [0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2], 0.0, 0.0] } else { v };
            for (k, value) in values.iter().enumerate().take(oc) {
                let idx = match spec.layout {
                    Layout::Nchw => (k * oh + oy) * ow + ox,
                    Layout::Nhwc => (oy * ow + ox) * oc + k,
                };
                out[idx] = (value / 255.0 - mean[k]) / std[k];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(w: u32, h: u32, c: u32, layout: Layout) -> InputSpec {
        InputSpec {
            width: w,
            height: h,
            channels: c,
            mean: vec![0.0; c as usize],
            std: vec![1.0; c as usize],
            layout,
        }
    }

    #[test]
    fn same_size_gray_is_the_identity() {
        let data: Vec<u8> = (0..12).map(|v| v * 20).collect();
        let img = ImageView { width: 4, height: 3, format: PixelFormat::Gray8, data: &data };
        let mut out = vec![0.0; 12];
        preprocess(&spec(4, 3, 1, Layout::Nchw), img, &mut out);
        let expected: Vec<f32> = data.iter().map(|&v| v as f32 / 255.0).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn rgb_to_gray_uses_luma_weights_and_layouts_agree() {
        let data = [255u8, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
        let img = ImageView { width: 2, height: 2, format: PixelFormat::Rgb8, data: &data };
        let mut out = vec![0.0; 4];
        preprocess(&spec(2, 2, 1, Layout::Nchw), img, &mut out);
        let expected = [0.299, 0.587, 0.114, 1.0];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
        let mut chw = vec![0.0; 12];
        let mut hwc = vec![0.0; 12];
        preprocess(&spec(2, 2, 3, Layout::Nchw), img, &mut chw);
        preprocess(&spec(2, 2, 3, Layout::Nhwc), img, &mut hwc);
        for c in 0..3 {
            for p in 0..4 {
                assert_eq!(chw[c * 4 + p], hwc[p * 3 + c]);
            }
        }
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        // 4x2 image, 2x2 target: scale 1, crop columns 1..3.
        let data = [0u8, 10, 20, 30, 40, 50, 60, 70];
        let img = ImageView { width: 4, height: 2, format: PixelFormat::Gray8, data: &data };
        let mut out = vec![0.0; 4];
        let mut s = spec(2, 2, 1, Layout::Nchw);
        s.std = vec![1.0 / 255.0];
        preprocess(&s, img, &mut out);
        for (o, e) in out.iter().zip([10.0, 20.0, 50.0, 60.0]) {
            assert!((o - e).abs() < 1e-4, "{out:?}");
        }
    }

    #[test]
    fn decode_rejects_empty_and_non_images() {
        assert!(Image::decode(b"").unwrap_err().to_string().contains("empty"));
        let err = format!("{:#}", Image::decode(b"hello, I am text").unwrap_err());
        assert!(err.contains("neither"), "{err}");
    }
}
