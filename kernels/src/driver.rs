//! The CUDA driver and its devices, probed without panicking.
//!
//! cudarc loads `libcuda` on first use and panics when it is absent, so
//! [`probe`] looks for the library first and reports why CUDA is unavailable
//! as an error instead. [`missing_runtime_library`] looks for the other
//! libraries tract's CUDA runtime loads the same way. Nothing here creates a
//! context or allocates on a GPU.

use std::ffi::c_int;

use cudarc::driver::{result, sys};
use thiserror::Error;

/// Why the CUDA driver could not be used.
#[derive(Debug, Error)]
pub enum DriverError {
    #[error(
        "libcuda not found: none of {} names (libcuda.so.1 among them) is on the loader's search path, LD_LIBRARY_PATH included",
        candidates.len()
    )]
    NotFound { candidates: Vec<String> },
    #[error("{call} failed: {error}")]
    Call { call: &'static str, error: result::DriverError },
    #[error("the CUDA driver reports no device")]
    NoDevice,
}

/// One GPU as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub ordinal: i32,
    pub name: String,
    /// Compute capability `(major, minor)`.
    pub compute: (i32, i32),
    pub memory_bytes: usize,
}

/// The driver's CUDA version and its devices (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Driver {
    /// The newest CUDA version the driver supports, `(major, minor)`.
    pub cuda: (u32, u32),
    pub devices: Vec<Device>,
}

fn call<T>(name: &'static str, r: Result<T, result::DriverError>) -> Result<T, DriverError> {
    r.map_err(|error| DriverError::Call { call: name, error })
}

/// Loads `libcuda`, initializes the driver and describes every device.
pub fn probe() -> Result<Driver, DriverError> {
    // SAFETY: dlopen of the candidate names; the driver's initializers have no
    // preconditions. Probing first keeps cudarc from panicking below.
    if !unsafe { sys::is_culib_present() } {
        let candidates = ["cuda", "nvcuda"].iter().flat_map(|l| cudarc::get_lib_name_candidates(l)).collect();
        return Err(DriverError::NotFound { candidates });
    }
    call("cuInit", result::init())?;
    let mut version: c_int = 0;
    // SAFETY: the pointer is valid for one c_int write.
    call("cuDriverGetVersion", unsafe { sys::cuDriverGetVersion(&mut version) }.result())?;
    let count = call("cuDeviceGetCount", result::device::get_count())?;
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let dev = call("cuDeviceGet", result::device::get(ordinal))?;
        let attribute = |a| {
            // SAFETY: `dev` came from cuDeviceGet.
            call("cuDeviceGetAttribute", unsafe { result::device::get_attribute(dev, a) })
        };
        let major = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        devices.push(Device {
            ordinal,
            name: call("cuDeviceGetName", result::device::get_name(dev))?,
            compute: (major, minor),
            // SAFETY: `dev` came from cuDeviceGet.
            memory_bytes: call("cuDeviceTotalMem", unsafe { result::device::total_mem(dev) })?,
        });
    }
    if devices.is_empty() {
        return Err(DriverError::NoDevice);
    }
    let version = u32::try_from(version).unwrap_or(0);
    Ok(Driver { cuda: (version / 1000, version % 1000 / 10), devices })
}

/// A dlopen probe of one library's candidate names.
type Probe = unsafe fn() -> bool;

/// The CUDA libraries tract's CUDA runtime loads besides the driver, as
/// `(name, probe)`.
const RUNTIME_LIBRARIES: [(&str, Probe); 4] = [
    ("libcudart (the CUDA runtime)", cudarc::runtime::sys::is_culib_present),
    ("libnvrtc", cudarc::nvrtc::sys::is_culib_present),
    ("libcublas", cudarc::cublas::sys::is_culib_present),
    ("libcudnn", cudarc::cudnn::sys::is_culib_present),
];

/// The first library tract's CUDA runtime needs that does not load here,
/// or `None` when all do.
pub fn missing_runtime_library() -> Option<&'static str> {
    RUNTIME_LIBRARIES.iter().find_map(|&(name, present)| {
        // SAFETY: a dlopen probe of the candidate names; nothing is called.
        (!unsafe { present() }).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver the probe says so; with one it describes a device.
    /// Either way it returns instead of panicking.
    #[test]
    fn probe_reports_instead_of_panicking() {
        match probe() {
            Ok(driver) => {
                assert!(driver.cuda.0 >= 1 && !driver.devices.is_empty(), "{driver:?}");
                assert!(driver.devices.iter().all(|d| d.compute.0 >= 1 && d.memory_bytes > 0), "{driver:?}");
            }
            Err(DriverError::NotFound { candidates }) => {
                assert!(candidates.iter().any(|c| c == "libcuda.so.1"), "{candidates:?}")
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
