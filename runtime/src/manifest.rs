//! `manifest.toml`: what a bundle holds and how to feed its model.
//!
//! Unknown fields are an error, so a typo never silently changes behaviour.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The manifest format this runtime reads and writes.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format, [`FORMAT`].
    pub format: u32,
    pub name: String,
    /// Strictly increasing across the releases of one model line.
    pub version: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Board families this bundle fits; `"any"` fits every board.
    pub compatible: Vec<String>,
    pub input: InputSpec,
    pub model: ModelSpec,
    pub labels: LabelsSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden: Option<GoldenSpec>,
    /// Every payload file: its path inside the bundle, size and sha256.
    pub files: BTreeMap<String, FileEntry>,
}

/// What the model expects as input and how an image becomes that tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    /// 1 (luma) or 3 (RGB).
    pub channels: u32,
    /// Per-channel mean and standard deviation, on values scaled to [0, 1].
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub layout: Layout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Float weights.
    Fp32,
    /// Weights stored as int8 with a float scale per output channel.
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The ONNX file.
    pub file: String,
    pub precision: Precision,
    /// Number of output classes (logits per image).
    pub classes: usize,
    /// Architecture facts, informative: `vit`, patch size, width, heads...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsSpec {
    /// One label per line, in class order.
    pub file: String,
}

/// Reference inputs and outputs: the bundle's own health check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSpec {
    /// `count` preprocessed inputs, little-endian f32, in the input layout.
    pub input: String,
    /// `count x classes` reference logits, little-endian f32.
    pub logits: String,
    pub count: usize,
    /// Expected top-1 class of each input.
    pub top1: Vec<usize>,
    /// Largest allowed absolute difference between computed and reference logits.
    pub tolerance: f32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

impl InputSpec {
    /// Number of f32 values of one preprocessed image.
    pub fn len(&self) -> usize {
        self.width as usize * self.height as usize * self.channels as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The model input shape for a batch of `n`.
    pub fn shape(&self, n: usize) -> [usize; 4] {
        let (w, h, c) = (self.width as usize, self.height as usize, self.channels as usize);
        match self.layout {
            Layout::Nchw => [n, c, h, w],
            Layout::Nhwc => [n, h, w, c],
        }
    }
}
