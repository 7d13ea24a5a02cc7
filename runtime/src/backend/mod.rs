//! Where the network runs: [`Backend`], how `--backend auto|cpu|cuda`
//! picks one ([`select_backend`], [`why_not_cuda`]), and each backend's plan.
//!
//! `cpu` is tract's plan with our ops in it ([`cpu`]): products with a
//! constant weight, and softmax; `cuda` is tract-cuda's with our GGeM kernel
//! ([`cuda`]).

use std::fmt;

use anyhow::{bail, Result};
use edgevit_kernels::DriverError;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;

use crate::board::{BackendChoice, Board, MIN_GPU_CUDA};

pub mod cpu;
pub mod cuda;

/// Where the network runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// tract's CPU runtime.
    Cpu,
    /// tract's CUDA runtime on GPU 0, GGeM on our kernel ([`cuda`]).
    Cuda,
}

/// The lowest compute capability the CUDA backend runs on: the first with
/// arithmetic on half floats, which the FP16 model needs.
pub const MIN_COMPUTE: (i32, i32) = (5, 3);

/// Why models cannot run on CUDA here, or `None` when they can. Checked in
/// order: the board, the driver library, a device, the driver's CUDA
/// version, the device's compute capability, the libraries tract's CUDA
/// runtime loads (cudart, NVRTC, cuBLAS, cuDNN).
pub fn why_not_cuda(board: Option<&Board>) -> Option<String> {
    if let Some(b) = board {
        if !b.gpu_path() && b.cuda.is_some() {
            return Some(format!(
                "board {} has CUDA {}, older than tract's CUDA runtime needs",
                b.name,
                b.cuda.as_deref().unwrap_or_default()
            ));
        }
    }
    let driver = match edgevit_kernels::driver::probe() {
        Err(DriverError::NotFound { .. }) => return Some("libcuda not found".into()),
        Err(e) => return Some(e.to_string()),
        Ok(driver) => driver,
    };
    if driver.cuda < MIN_GPU_CUDA {
        return Some(format!(
            "the driver supports CUDA {}.{}, tract's CUDA runtime needs {}.{} or newer",
            driver.cuda.0, driver.cuda.1, MIN_GPU_CUDA.0, MIN_GPU_CUDA.1
        ));
    }
    let device = &driver.devices[0];
    if device.compute < MIN_COMPUTE {
        return Some(format!(
            "{} has compute capability {}.{}, FP16 inference needs {}.{} or newer",
            device.name, device.compute.0, device.compute.1, MIN_COMPUTE.0, MIN_COMPUTE.1
        ));
    }
    edgevit_kernels::missing_runtime_library()
}

/// The backend that runs `choice` here. `auto` takes CUDA when it can run
/// and otherwise the CPU, logging why; `cuda` that cannot run is an error
/// saying why.
pub fn select_backend(choice: BackendChoice, board: Option<&Board>) -> Result<Backend> {
    if choice == BackendChoice::Cpu {
        return Ok(Backend::Cpu);
    }
    match why_not_cuda(board) {
        None => Ok(Backend::Cuda),
        Some(why) if choice == BackendChoice::Auto => {
            log::info!("backend: cpu ({why})");
            Ok(Backend::Cpu)
        }
        Some(why) => bail!("backend cuda cannot run here: {why}"),
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }

    /// Optimizes `model` for this backend and plans it; on the CPU, says
    /// what its products run on.
    pub(crate) fn prepare(
        self,
        model: TypedModel,
        options: &RunOptions,
    ) -> TractResult<(Box<dyn Runnable>, Option<cpu::CpuPlan>)> {
        match self {
            Backend::Cpu => cpu::prepare(model, options).map(|(plan, cpu)| (plan, Some(cpu))),
            Backend::Cuda => Ok((cuda::prepare(model.into_decluttered()?, options)?, None)),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The message a panic was raised with.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_board_with_old_cuda_keeps_auto_on_the_cpu_and_refuses_cuda() {
        let xavier = Board::named("jetson-xavier-nx").unwrap();
        let why = "board jetson-xavier-nx has CUDA 11.4, older than tract's CUDA runtime needs";
        assert_eq!(why_not_cuda(Some(&xavier)).as_deref(), Some(why));
        assert_eq!(select_backend(BackendChoice::Auto, Some(&xavier)).unwrap(), Backend::Cpu);
        assert_eq!(select_backend(BackendChoice::Cpu, Some(&xavier)).unwrap(), Backend::Cpu);
        let err = select_backend(BackendChoice::Cuda, Some(&xavier)).unwrap_err();
        assert_eq!(err.to_string(), format!("backend cuda cannot run here: {why}"));
    }
}
