//! CUDA kernels of edgevit: the CUDA C sources under `cuda/`, their launch
//! configurations and launches (each beside the source whose parameter
//! list it passes), an f64 CPU reference of every kernel, the tolerance tiers
//! their parity tests use, NVRTC compilation to PTX and its cache, and a
//! probe of the CUDA driver and libraries (all loaded at run time, so
//! everything here builds and runs without CUDA).
//!
//! | family | source | kernels | launch | reference |
//! |---|---|---|---|---|
//! | [`ggem`] | `cuda/ggem.cu` | `ggem_f16`, `ggem_f32` | [`GgemKernels::launch`] | [`ggem_reference`] |

pub mod driver;
pub mod ggem;
pub mod nvrtc;
pub mod ptx;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tolerance;

pub use driver::{missing_runtime_library, Device, Driver, DriverError};
pub use ggem::{
    ggem_reference, launch_config, GgemError, GgemKernels, GgemLaunch, GgemLaunchError, GgemParams, GgemShape,
};
pub use nvrtc::{CompiledPtx, Nvrtc, NvrtcError};
pub use ptx::{KernelStore, PtxOrigin};
pub use tolerance::{Mismatch, Tolerance, ToleranceError};

/// Every CUDA source of the crate as `(file name, source)`, for compiling
/// them all (tests, prebuilds).
pub const SOURCES: &[(&str, &str)] = &[(ggem::SOURCE_NAME, ggem::SOURCE)];
