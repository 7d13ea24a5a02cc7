//! The CUDA driver and its devices, probed without panicking.
//!
//! cudarc loads `libcuda` on first use and panics when it is absent, so
//! [`probe`] looks for the library first and reports why CUDA is unavailable
//! as an error instead. [`probe_runtime_libraries`] looks for the other
//! libraries tract's CUDA runtime loads by the names its bindings try, and
//! says when only a CUDA 13 version of one is there. Nothing here creates a
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

/// The CUDA libraries tract's CUDA runtime loads besides the driver, as
/// `(what, file stem)`.
const RUNTIME_LIBRARIES: [(&str, &str); 4] =
    [("cudart", "cudart"), ("NVRTC", "nvrtc"), ("cuBLAS", "cublas"), ("cuDNN", "cudnn")];

/// Sonames of CUDA 13 that the loader of tract-cuda's CUDA 12.2 bindings
/// does not try (cuDNN 9 serves both and is among its names).
const CUDA13_STEMS: [&str; 3] = ["cudart", "nvrtc", "cublas"];

/// How one library tract's CUDA runtime needs was looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibraryProbe {
    /// `cuBLAS`, `cuDNN`, ...
    pub what: &'static str,
    /// The file name's stem: `cublas` for `libcublas.so.12`.
    pub stem: &'static str,
    /// The names tried, in order (cudarc's, for this CUDA API version).
    pub tried: Vec<String>,
    /// The name that loaded, if one did.
    pub found: Option<String>,
    /// A CUDA 13 soname present on this machine when none of `tried` is:
    /// the library is there, but in a version these bindings do not load.
    pub cuda13: Option<String>,
}

impl LibraryProbe {
    /// One line for `doctor`: what loaded, or what was tried and why it
    /// does not do.
    pub fn summary(&self) -> String {
        match (&self.found, &self.cuda13) {
            (Some(name), _) => format!("{} {name}", self.what),
            (None, Some(newer)) => format!(
                "{} only as {newer} (CUDA 13), which tract-cuda's CUDA 12.2 bindings do not load; \
                 install its CUDA 12 library or put an unversioned lib{}.so on the loader's path",
                self.what, self.stem
            ),
            (None, None) => format!("{} not found (tried {})", self.what, self.tried.join(", ")),
        }
    }
}

/// Whether `name` loads through the dynamic loader's search (the library is
/// unloaded again right after).
fn loads(name: &str) -> bool {
    let Ok(c_name) = std::ffi::CString::new(name) else { return false };
    // SAFETY: c_name is a valid C string; loading a CUDA library runs its
    // initializers, which have no preconditions; nothing from it is called.
    let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: handle came from a successful dlopen and is closed once.
    unsafe { libc::dlclose(handle) };
    true
}

/// Looks for each library tract's CUDA runtime loads, by the names its
/// bindings try, and for CUDA 13's sonames where none of those loads.
pub fn probe_runtime_libraries() -> Vec<LibraryProbe> {
    RUNTIME_LIBRARIES
        .iter()
        .map(|&(what, stem)| {
            let mut tried: Vec<String> = Vec::new();
            for name in cudarc::get_lib_name_candidates(stem) {
                if !tried.contains(&name) {
                    tried.push(name);
                }
            }
            let found = tried.iter().find(|n| loads(n)).cloned();
            let cuda13 = found
                .is_none()
                .then(|| format!("lib{stem}.so.13"))
                .filter(|n| CUDA13_STEMS.contains(&stem) && loads(n));
            LibraryProbe { what, stem, tried, found, cuda13 }
        })
        .collect()
}

/// The first library tract's CUDA runtime needs that does not load here,
/// said as [`LibraryProbe::summary`], or `None` when all do.
pub fn missing_runtime_library() -> Option<String> {
    probe_runtime_libraries().into_iter().find(|p| p.found.is_none()).map(|p| p.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_probes_name_what_they_tried() {
        let probes = probe_runtime_libraries();
        assert_eq!(probes.iter().map(|p| p.what).collect::<Vec<_>>(), ["cudart", "NVRTC", "cuBLAS", "cuDNN"]);
        for p in &probes {
            let stem = p.stem;
            assert!(
                p.tried.contains(&format!("lib{stem}.so")) && p.tried.contains(&format!("lib{stem}.so.12"))
            );
            match &p.found {
                Some(name) => assert!(p.tried.contains(name) && p.summary().ends_with(name.as_str())),
                None => assert!(p.summary().contains(&format!("lib{stem}.so.12")), "{}", p.summary()),
            }
        }
        let only_13 = LibraryProbe {
            what: "cuBLAS",
            stem: "cublas",
            tried: vec!["libcublas.so.12".into()],
            found: None,
            cuda13: Some("libcublas.so.13".into()),
        };
        assert!(
            only_13.summary().starts_with("cuBLAS only as libcublas.so.13 (CUDA 13)"),
            "{}",
            only_13.summary()
        );
        assert!(only_13.summary().contains("unversioned libcublas.so"), "{}", only_13.summary());
    }

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
