//! Build and measurement tools of edgevit: firmware images, kernel prebuilds
//! per board, benchmarks against peers.
//!
//! [`image`] builds a board's firmware image: [`cross`] compiles `edgevit`
//! for the board under its glibc floor, [`elf`] reads what the binary needs
//! of glibc, [`firmware`] packs the staging tree into one reproducible,
//! signed image and verifies such images; [`cli`] holds the
//! `edgevit-tools` verbs. The other tools are scripts beside this crate
//! (`tools/*.sh`, `tools/bench/`, `tools/gpu/`).

pub mod cli;
pub mod cross;
pub mod elf;
pub mod firmware;
pub mod image;
