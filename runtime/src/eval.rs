//! Accuracy on a labelled set in idx format (MNIST, Fashion-MNIST), read
//! directly from the `.gz` files.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::engine::Engine;
use crate::postprocess::argmax;
use crate::preprocess::{ImageView, PixelFormat};

/// An idx file: unsigned bytes with its dimensions.
#[derive(Debug)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Largest idx payload accepted (the whole of ImageNet at 64x64 fits).
const MAX_IDX_BYTES: u64 = 4 << 30;

impl Idx {
    /// Reads an idx file, gzip-compressed or plain (sniffed from the content).
    pub fn open(path: &Path) -> Result<Idx> {
        let context = || format!("idx {}", path.display());
        let bytes = std::fs::read(path).with_context(|| format!("idx {}: cannot read", path.display()))?;
        let mut data = Vec::new();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(bytes.as_slice())
                .take(MAX_IDX_BYTES + 1)
                .read_to_end(&mut data)
                .map_err(|e| anyhow::anyhow!("expected gzip data but {e}"))
                .with_context(context)?;
        } else {
            data = bytes;
        }
        Idx::parse(data).with_context(context)
    }

    fn parse(mut data: Vec<u8>) -> Result<Idx> {
        if data.len() < 4 || data[0] != 0 || data[1] != 0 {
            bail!("expected the idx magic 00 00 but the file starts differently");
        }
        if data[2] != 0x08 {
            bail!("expected unsigned-byte data (type 0x08) but the file has type {:#04x}", data[2]);
        }
        let rank = data[3] as usize;
        let header = 4 + 4 * rank;
        if rank == 0 || data.len() < header {
            bail!("expected {rank} dimensions in the header but the file is too short");
        }
        let dims: Vec<usize> = data[4..header]
            .chunks_exact(4)
            .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
            .collect();
        let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let found = data.len() - header;
        if expected != Some(found) {
            bail!(
                "expected {} bytes of data for dimensions {dims:?} but the file has {found}",
                expected.unwrap_or(usize::MAX)
            );
        }
        data.drain(..header);
        Ok(Idx { dims, data })
    }
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
    pub seconds: f64,
}

impl Accuracy {
    pub fn percent(&self) -> f64 {
        100.0 * self.correct as f64 / self.total.max(1) as f64
    }
}

/// Classifies the first `limit` images of an idx set and counts top-1 hits.
pub fn evaluate(engine: &mut Engine, images: &Idx, labels: &Idx, limit: Option<usize>) -> Result<Accuracy> {
    let [n, h, w] = images.dims[..] else {
        bail!("idx images: expected dimensions [count, height, width] but found {:?}", images.dims);
    };
    if labels.dims != [n] {
        bail!("idx labels: expected dimensions [{n}] to match the images but found {:?}", labels.dims);
    }
    let classes = engine.labels.len();
    if let Some(bad) = labels.data.iter().find(|&&l| l as usize >= classes) {
        bail!("idx labels: expected classes below {classes} but found {bad}");
    }
    let total = limit.map_or(n, |l| l.min(n));
    let start = Instant::now();
    let mut correct = 0;
    for (pixels, &label) in images.data.chunks_exact(h * w).zip(&labels.data).take(total) {
        let img = ImageView { width: w as u32, height: h as u32, format: PixelFormat::Gray8, data: pixels };
        engine.set_image(img);
        if argmax(engine.run()?) == label as usize {
            correct += 1;
        }
    }
    Ok(Accuracy { correct, total, seconds: start.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_rejects_inconsistent_sizes() {
        let mut bytes = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend(0..6u8);
        let idx = Idx::parse(bytes.clone()).unwrap();
        assert_eq!(idx.dims, [2, 3]);
        assert_eq!(idx.data, [0, 1, 2, 3, 4, 5]);
        bytes.pop();
        assert!(Idx::parse(bytes).unwrap_err().to_string().contains("expected 6 bytes"));
        assert!(Idx::parse(vec![1, 2, 3]).is_err());
        // A header claiming 2^32 x 2^32 items must not overflow or allocate.
        assert!(Idx::parse(vec![0, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255]).is_err());
    }
}
