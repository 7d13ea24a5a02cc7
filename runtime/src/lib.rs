//! edgevit: classify camera frames with a quantized Vision Transformer.
//!
//! The pipeline, one module per stage: `preprocess` turns an image into
//! the model input, `engine` runs a bundle's model through tract on a
//! backend, `postprocess` ranks the classes, `pipeline` runs the camera
//! loop. `cli` wires them into verbs. The modules are the crate's own; what
//! the binary, the end-to-end tests, the fuzz targets and the firmware
//! tools use is re-exported here.

mod backend;
mod bench;
mod board;
mod bundle;
mod cli;
mod create;
mod display;
mod embedded;
mod engine;
mod eval;
mod fsutil;
mod ggem;
mod gst;
mod keys;
mod manifest;
mod overlay;
mod pipeline;
mod postprocess;
mod preprocess;
mod quantize;
mod source;
mod stats;
mod update;
mod watchdog;

pub use backend::cpu::{Kernel as CpuKernel, QKernel};
pub use backend::{why_not_cuda, Backend};
pub use board::Board;
pub use bundle::{
    f32_bytes, f32s, file_entry, parse_manifest, sha256_hex, sha256_reader, sign_dir, Bundle, RawBundle,
    SignaturePolicy, MANIFEST, SIGNATURE,
};
pub use cli::{run, Cli};
pub use create::INT8_TOLERANCE_SHARE;
pub use embedded::default_bundle;
pub use engine::{Engine, EngineOptions, HALF_LOGIT_TOLERANCE};
pub use fsutil::kind_name;
pub use ggem::{fuse, Ggem};
pub use keys::{parse_signature, SecretKey, TrustStore};
pub use manifest::{InputSpec, Layout, Manifest, Precision};
pub use pipeline::{capture, Slot};
pub use postprocess::TopK;
pub use preprocess::{preprocess, Image};
pub use source::{camera_frame, open as open_source, Capture, Pixels, Source, SourceArgs};
#[cfg(feature = "testing")]
pub use update::CRASH_ENV;
pub use update::{
    agent::STEPS as UPDATE_STEPS, channel, device::DeviceId, rollout, transport::check_ca_file,
};
