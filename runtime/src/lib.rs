//! edgevit: classify camera frames with a quantized Vision Transformer.
//!
//! The pipeline, one module per stage: [`preprocess`] turns an image into
//! the model input, [`engine`] runs a [`bundle`]'s model through tract,
//! [`postprocess`] ranks the classes. [`cli`] wires them into verbs.

pub mod backend;
pub mod bench;
pub mod board;
pub mod bundle;
pub mod cli;
mod create;
pub mod display;
mod embedded;
pub mod engine;
pub mod eval;
mod fsutil;
pub mod ggem;
pub mod keys;
pub mod manifest;
pub mod overlay;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
mod quantize;
pub mod source;
pub mod update;
mod watchdog;

pub use backend::Backend;
pub use bundle::{Bundle, SignaturePolicy};
pub use create::INT8_TOLERANCE_SHARE;
pub use embedded::default_bundle;
pub use engine::{Engine, EngineOptions};
pub use fsutil::kind_name;
pub use manifest::Manifest;
