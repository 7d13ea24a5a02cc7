//! Build and measurement tools of edgevit: firmware images, kernel prebuilds
//! per board, benchmarks against peers.
//!
//! [`firmware`] packs a staging tree into one reproducible, signed image and
//! verifies such images; [`cli`] holds the `edgevit-tools` verbs. The other
//! tools are scripts beside this crate (`tools/*.sh`, `tools/bench/`,
//! `tools/gpu/`).

pub mod cli;
pub mod firmware;
