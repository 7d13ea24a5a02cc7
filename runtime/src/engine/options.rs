//! How a model is loaded: [`EngineOptions`], the command-line flags that
//! make them ([`EngineArgs`]), and how reports name the engine that ran.

use std::fmt;

use anyhow::Result;

use crate::backend::{select_backend, Backend};
use crate::board::{BackendChoice, Board};

/// How to load a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    pub backend: Backend,
    /// Replace each GGeM head by one fused op (see [`crate::ggem`]).
    pub fuse_ggem: bool,
    /// CPU threads running the network (ours and tract's ops); 0 means every core.
    pub threads: usize,
    /// Images per run. The camera loop classifies one; `bench` measures more.
    pub batch: usize,
    /// Run the network in half precision (tract's `f32_to_f16`): the
    /// weights and activations in f16, the input and logits still f32.
    pub half: bool,
    /// Store the weights of matrix products as Q4_0 blocks (tract's block
    /// quantization), which tract-cuda multiplies without dequantizing.
    pub block_quant: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            backend: Backend::Cpu,
            fuse_ggem: true,
            threads: 1,
            batch: 1,
            half: false,
            block_quant: false,
        }
    }
}

impl EngineOptions {
    /// The number of threads, 0 resolved to the cores available.
    pub(super) fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Which model ran where, as reports name it; in text `NAME vN PRECISION
/// on BACKEND in FLOAT`.
#[derive(Debug, serde::Serialize)]
pub struct EngineInfo {
    pub model: String,
    pub version: u64,
    /// Of the stored weights: `fp32` or `int8`.
    pub precision: &'static str,
    pub backend: &'static str,
    /// Precision the network ran in: `f32` or `f16`.
    pub float: &'static str,
    /// The matrix products' weights were Q4_0 blocks.
    pub block_quant: bool,
}

impl fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{} {} on {} in {}", self.model, self.version, self.precision, self.backend, self.float)
    }
}

/// Where and how the network runs: the flags of every verb that loads a
/// model.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Where the network runs: `auto` takes CUDA where it can run and
    /// falls back to the CPU, saying why at info level. Default: the board
    /// profile's, else auto.
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// Run GGeM heads as the exported ops instead of the fused op (for comparison).
    #[arg(long)]
    pub no_fusion: bool,
    /// CPU threads for the network (0: every core). Default: the board
    /// profile's when one is in force, else 1.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Precision of the network's weights and activations (the input and
    /// logits stay f32). Default: f16 on cuda, f32 on cpu.
    #[arg(long, value_enum)]
    pub float: Option<Float>,
    /// Store the matrix products' weights as Q4_0 blocks (tract's block
    /// quantization, 4.5 bits a weight) when the model loads.
    #[arg(long)]
    pub block_quant: bool,
}

/// Float precision the network runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Float {
    F32,
    F16,
}

impl EngineArgs {
    pub fn options(&self) -> Result<EngineOptions> {
        self.options_on(None)
    }

    /// The options, taking what the command line leaves open from `board`.
    pub fn options_on(&self, board: Option<&Board>) -> Result<EngineOptions> {
        let choice = self.backend.or(board.map(|b| b.backend)).unwrap_or(BackendChoice::Auto);
        let threads = self.threads.or(board.map(|b| b.threads as usize)).unwrap_or(1);
        let backend = select_backend(choice, board)?;
        Ok(EngineOptions {
            backend,
            fuse_ggem: !self.no_fusion,
            threads,
            half: self.float.map_or(backend == Backend::Cuda, |f| f == Float::F16),
            block_quant: self.block_quant,
            ..EngineOptions::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_args(threads: Option<usize>) -> EngineArgs {
        EngineArgs {
            backend: Some(BackendChoice::Cpu),
            no_fusion: false,
            threads,
            float: None,
            block_quant: false,
        }
    }

    #[test]
    fn threads_come_from_the_command_line_then_the_board_then_one() {
        let orin = Board::named("jetson-agx-orin").unwrap();
        assert_eq!(engine_args(Some(3)).options_on(Some(&orin)).unwrap().threads, 3);
        assert_eq!(engine_args(None).options_on(Some(&orin)).unwrap().threads, orin.threads as usize);
        assert_eq!(engine_args(None).options().unwrap().threads, 1);
    }
}
