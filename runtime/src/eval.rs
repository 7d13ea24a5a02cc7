//! Accuracy on a labelled set in idx format (MNIST, Fashion-MNIST), read
//! directly from the `.gz` files.

use std::fmt;
use std::io::{BufRead, Read};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::engine::{Engine, EngineInfo};
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
    /// Reads an idx file, gzip-compressed or plain (sniffed from the
    /// content). The header is checked before any data is read, and the
    /// data is read as it comes, so memory is bounded by what the file
    /// really holds, never by what its header claims.
    pub fn open(path: &Path) -> Result<Idx> {
        let context = || format!("idx {}", path.display());
        let (file, _) = crate::fsutil::open_regular(path, "idx")?;
        let mut file = std::io::BufReader::new(file);
        let gzip = file.fill_buf().with_context(context)?.starts_with(&[0x1f, 0x8b]);
        if gzip { Idx::read(flate2::bufread::GzDecoder::new(file)) } else { Idx::read(file) }
            .with_context(context)
    }

    fn read(mut r: impl Read) -> Result<Idx> {
        let mut magic = [0u8; 4];
        if !fill(&mut r, &mut magic)? || magic[0] != 0 || magic[1] != 0 {
            bail!("expected the idx magic 00 00 but the file starts differently");
        }
        if magic[2] != 0x08 {
            bail!("expected unsigned-byte data (type 0x08) but the file has type {:#04x}", magic[2]);
        }
        let rank = magic[3] as usize;
        let mut header = vec![0u8; 4 * rank];
        if rank == 0 || !fill(&mut r, &mut header)? {
            bail!("expected {rank} dimensions in the header but the file is too short");
        }
        let dims: Vec<usize> =
            header.chunks_exact(4).map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize).collect();
        let expected = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let expected = match expected {
            Some(n) if n <= MAX_IDX_BYTES => n,
            _ => bail!("expected at most {MAX_IDX_BYTES} bytes of data but dimensions {dims:?} need more"),
        };
        let mut data = Vec::new();
        r.take(expected + 1)
            .read_to_end(&mut data)
            .map_err(|e| anyhow::anyhow!("expected idx data but {e}"))?;
        if data.len() as u64 != expected {
            let found =
                if data.len() as u64 > expected { "more".to_string() } else { data.len().to_string() };
            bail!("expected {expected} bytes of data for dimensions {dims:?} but the file has {found}");
        }
        Ok(Idx { dims, data })
    }
}

/// Fills `buf` from `r`: `false` when the data ends first.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => bail!("expected idx data but {e}"),
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

/// What `edgevit eval` reports: the engine and its accuracy.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    #[serde(flatten)]
    pub engine: EngineInfo,
    pub correct: usize,
    pub total: usize,
    /// Top-1 accuracy in percent.
    pub accuracy: f64,
    pub seconds: f64,
}

impl EvalReport {
    pub fn new(engine: &Engine, acc: &Accuracy) -> EvalReport {
        EvalReport {
            engine: engine.info(),
            correct: acc.correct,
            total: acc.total,
            accuracy: acc.percent(),
            seconds: acc.seconds,
        }
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: accuracy {:.2}% ({}/{}) in {:.1} s ({:.3} ms/image)",
            self.engine,
            self.accuracy,
            self.correct,
            self.total,
            self.seconds,
            self.seconds * 1e3 / self.total.max(1) as f64
        )
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
        let idx = Idx::read(bytes.as_slice()).unwrap();
        assert_eq!(idx.dims, [2, 3]);
        assert_eq!(idx.data, [0, 1, 2, 3, 4, 5]);
        let longer = [bytes.as_slice(), &[6]].concat();
        assert!(Idx::read(longer.as_slice()).unwrap_err().to_string().ends_with("but the file has more"));
        bytes.pop();
        assert!(Idx::read(bytes.as_slice()).unwrap_err().to_string().contains("expected 6 bytes"));
        assert!(Idx::read([1u8, 2, 3].as_slice()).is_err());
        // A header claiming 2^32 x 2^32 items must not overflow or allocate.
        let huge = [0u8, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(Idx::read(huge.as_slice()).unwrap_err().to_string().contains("need more"));
    }
}
