//! Compiling the CUDA sources to PTX with NVRTC, loaded at run time.
//!
//! [`Nvrtc::load`] probes for `libnvrtc` first and says why it is unavailable
//! instead of panicking; nothing here needs a GPU or a driver.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::{result, sys};
use thiserror::Error;

/// Compute capabilities of the boards edgevit ships for, without Thor, whose
/// number depends on the CUDA release: see [`THOR_ARCHS`].
/// Xavier (7.2), Orin (8.7), Hopper (9.0).
pub const BOARD_ARCHS: [u32; 3] = [72, 87, 90];

/// Thor's compute capability: 11.0 from CUDA 13, 10.1 in CUDA 12.8 and 12.9.
pub const THOR_ARCHS: [u32; 2] = [110, 101];

/// Environment variable naming the header directories, `:`-separated: the
/// first holds `cuda_fp16.h` (the `include/` of the CUDA runtime headers),
/// the others what else a source includes (CCCL's `cuda/std/...` for
/// tract's kernels); `tools/test.sh` sets it.
pub const INCLUDE_ENV: &str = "EDGEVIT_CUDA_INCLUDE";

/// Why NVRTC could not be used.
#[derive(Debug, Error)]
pub enum NvrtcError {
    #[error(
        "libnvrtc not found (tried {candidates:?} on the loader's search path, LD_LIBRARY_PATH included)"
    )]
    NotFound { candidates: Vec<String> },
    #[error("{call} failed: {code:?}")]
    Call { call: &'static str, code: sys::nvrtcResult },
    #[error(
        "compute_{arch} is not among the architectures this NVRTC {major}.{minor} supports: {supported:?}"
    )]
    Unsupported { arch: u32, major: i32, minor: i32, supported: Vec<u32> },
    #[error("{name} contains a NUL byte")]
    Nul { name: String },
    #[error("compiling {name} for compute_{arch} ({code:?}) with {options:?}:\n{log}")]
    Compile { name: String, arch: u32, code: sys::nvrtcResult, options: Vec<String>, log: String },
}

/// A loaded NVRTC with its version and the architectures it compiles for.
#[derive(Clone, Debug)]
pub struct Nvrtc {
    major: i32,
    minor: i32,
    archs: Vec<u32>,
}

/// PTX for one architecture, and NVRTC's log (warnings), empty when clean.
#[derive(Clone, Debug)]
pub struct CompiledPtx {
    pub arch: u32,
    pub ptx: String,
    pub log: String,
}

impl Nvrtc {
    /// Finds and loads `libnvrtc`, reads its version and supported
    /// architectures.
    pub fn load() -> Result<Self, NvrtcError> {
        // SAFETY: loads libnvrtc through dlopen; NVRTC's initializers have no
        // preconditions. Probing first keeps cudarc from panicking later.
        if !unsafe { sys::is_culib_present() } {
            return Err(NvrtcError::NotFound { candidates: cudarc::get_lib_name_candidates("nvrtc") });
        }
        let (mut major, mut minor) = (0 as c_int, 0 as c_int);
        // SAFETY: both pointers are valid for one c_int write.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|e| call("nvrtcVersion", e))?;
        let mut count: c_int = 0;
        // SAFETY: the pointer is valid for one c_int write.
        unsafe { sys::nvrtcGetNumSupportedArchs(&mut count) }
            .result()
            .map_err(|e| call("nvrtcGetNumSupportedArchs", e))?;
        let mut archs = vec![0 as c_int; usize::try_from(count).unwrap_or(0)];
        if !archs.is_empty() {
            // SAFETY: `archs` holds the `count` elements NVRTC writes.
            unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
                .result()
                .map_err(|e| call("nvrtcGetSupportedArchs", e))?;
        }
        Ok(Self { major, minor, archs: archs.into_iter().filter_map(|a| u32::try_from(a).ok()).collect() })
    }

    /// `(major, minor)` of the loaded NVRTC.
    pub fn version(&self) -> (i32, i32) {
        (self.major, self.minor)
    }

    /// Supported architectures as compute capabilities times ten (`90` is
    /// 9.0), ascending.
    pub fn supported_archs(&self) -> &[u32] {
        &self.archs
    }

    pub fn supports(&self, arch: u32) -> bool {
        self.archs.contains(&arch)
    }

    /// The Thor architecture under this NVRTC's numbering, if it knows Thor.
    pub fn thor_arch(&self) -> Option<u32> {
        THOR_ARCHS.into_iter().find(|&a| self.supports(a))
    }

    /// Compiles `source` (named `name` in diagnostics) to PTX for
    /// `compute_<arch>`, searching `include_dirs` for headers such as
    /// `cuda_fp16.h`.
    pub fn compile_ptx(
        &self,
        source: &str,
        name: &str,
        arch: u32,
        include_dirs: &[PathBuf],
    ) -> Result<CompiledPtx, NvrtcError> {
        self.compile_ptx_with(source, name, arch, include_dirs, &[])
    }

    /// [`Nvrtc::compile_ptx`] with more NVRTC options (`--std=c++17`).
    pub fn compile_ptx_with(
        &self,
        source: &str,
        name: &str,
        arch: u32,
        include_dirs: &[PathBuf],
        extra_options: &[&str],
    ) -> Result<CompiledPtx, NvrtcError> {
        if !self.supports(arch) {
            return Err(NvrtcError::Unsupported {
                arch,
                major: self.major,
                minor: self.minor,
                supported: self.archs.clone(),
            });
        }
        let mut options = vec![format!("--gpu-architecture=compute_{arch}")];
        options.extend(include_dirs.iter().map(|d| format!("--include-path={}", d.display())));
        options.extend(extra_options.iter().map(|o| o.to_string()));
        let c_source = CString::new(source).map_err(|_| NvrtcError::Nul { name: name.into() })?;
        let c_name = CString::new(name).map_err(|_| NvrtcError::Nul { name: name.into() })?;
        // Declared after the strings it may point into, so dropped before them.
        let program = Program(
            result::create_program(&c_source, Some(&c_name)).map_err(|e| call("nvrtcCreateProgram", e))?,
        );
        // SAFETY: `program` is a live program; the options are copied into
        // C strings for the duration of the call.
        let compiled = unsafe { result::compile_program(program.0, &options) };
        // SAFETY: `program` is live; the log exists after a compile attempt.
        let log = unsafe { result::get_program_log(program.0) }
            .map(c_chars_to_string)
            .map_err(|e| call("nvrtcGetProgramLog", e))?;
        if let Err(e) = compiled {
            return Err(NvrtcError::Compile { name: name.into(), arch, code: e.0, options, log });
        }
        // SAFETY: `program` compiled successfully, so it holds PTX.
        let ptx = unsafe { result::get_ptx(program.0) }
            .map(c_chars_to_string)
            .map_err(|e| call("nvrtcGetPTX", e))?;
        Ok(CompiledPtx { arch, ptx, log })
    }
}

/// The include directories named by [`INCLUDE_ENV`], if set and the first
/// holds `cuda_fp16.h`.
pub fn include_dirs_from_env() -> Result<Vec<PathBuf>, String> {
    let list = std::env::var_os(INCLUDE_ENV).ok_or_else(|| format!("{INCLUDE_ENV} is not set"))?;
    let dirs: Vec<PathBuf> = std::env::split_paths(&list).collect();
    match dirs.first() {
        Some(first) if first.join("cuda_fp16.h").is_file() => Ok(dirs),
        _ => {
            Err(format!("{INCLUDE_ENV}={} has no cuda_fp16.h in its first directory", list.to_string_lossy()))
        }
    }
}

/// The directories NVRTC needs for `cuda_fp16.h` on this machine:
/// [`INCLUDE_ENV`] when set, else the CUDA toolkit's `include/` under
/// `$CUDA_HOME`, `$CUDA_PATH` or `/usr/local/cuda`, with its `cccl/` tree
/// where it has one (CUDA 13 moved the C++ library there).
pub fn include_dirs() -> Result<Vec<PathBuf>, String> {
    if std::env::var_os(INCLUDE_ENV).is_some() {
        return include_dirs_from_env();
    }
    let roots = ["CUDA_HOME", "CUDA_PATH"].iter().filter_map(std::env::var_os).map(PathBuf::from);
    let mut tried = Vec::new();
    for root in roots.chain([PathBuf::from("/usr/local/cuda")]) {
        let include = root.join("include");
        if include.join("cuda_fp16.h").is_file() {
            let cccl = include.join("cccl");
            return Ok(if cccl.is_dir() { vec![include, cccl] } else { vec![include] });
        }
        tried.push(include.display().to_string());
    }
    Err(format!("no cuda_fp16.h in {} (set {INCLUDE_ENV} or CUDA_HOME)", tried.join(", ")))
}

/// Destroys the program when dropped, on every path out of `compile_ptx`.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is
        // destroyed once, here. A failure leaks it, which is harmless.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn call(call: &'static str, e: result::NvrtcError) -> NvrtcError {
    NvrtcError::Call { call, code: e.0 }
}

/// NVRTC's NUL-terminated log or PTX buffer as a string.
fn c_chars_to_string(buf: Vec<c_char>) -> String {
    // c_char is i8 on x86_64 and u8 on aarch64.
    #[allow(clippy::unnecessary_cast)]
    let bytes: Vec<u8> = buf.into_iter().map(|c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}
