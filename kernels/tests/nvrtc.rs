//! Every `.cu` under `kernels/cuda/` compiles with NVRTC to PTX for every
//! board architecture. Needs no GPU, but does need NVRTC and the CUDA runtime
//! headers: `tools/test.sh` installs both (pinned PyPI wheels in
//! `.venv-cuda/`) and exports `LD_LIBRARY_PATH` and `EDGEVIT_CUDA_INCLUDE`.
//! Without them these tests fail rather than skip, so a machine that cannot
//! check the kernels never passes as one that did.

use std::path::{Path, PathBuf};

use edgevit_kernels::nvrtc::{include_dir_from_env, BOARD_ARCHS};
use edgevit_kernels::{ggem, Nvrtc, SOURCES};

const SETUP: &str = "run tools/test.sh, which installs NVRTC and the CUDA headers into .venv-cuda/ \
     and exports LD_LIBRARY_PATH and EDGEVIT_CUDA_INCLUDE";

fn nvrtc() -> Nvrtc {
    Nvrtc::load().unwrap_or_else(|e| panic!("cannot load NVRTC: {e}; {SETUP}"))
}

fn include_dir() -> PathBuf {
    include_dir_from_env().unwrap_or_else(|e| panic!("no CUDA headers: {e}; {SETUP}"))
}

/// Every `.cu` file under `kernels/cuda/`, sorted.
fn cuda_sources() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .cu files under {}", dir.display());
    files
}

/// The architectures to compile for: the fixed board list, which this
/// NVRTC must support, and Thor under whichever number it knows.
fn target_archs(nvrtc: &Nvrtc) -> Vec<u32> {
    let (major, minor) = nvrtc.version();
    for arch in BOARD_ARCHS {
        assert!(
            nvrtc.supports(arch),
            "NVRTC {major}.{minor} cannot compile for compute_{arch} (it supports {:?}); \
             CUDA 13 dropped compute_72, so {SETUP} to get the pinned CUDA 12 NVRTC",
            nvrtc.supported_archs()
        );
    }
    let mut archs = BOARD_ARCHS.to_vec();
    match nvrtc.thor_arch() {
        Some(thor) => archs.push(thor),
        None => eprintln!("NVRTC {major}.{minor} does not know Thor (sm_101 / sm_110); compiling without it"),
    }
    archs
}

/// NVRTC's log without the deprecation notice it prints for every
/// architecture below 7.5: Xavier (7.2) is a board we ship for, and NVRTC has
/// no option to silence that notice alone.
fn unexpected_warnings(log: &str, arch: u32) -> String {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| !(arch < 75 && line.contains("Architectures prior to") && line.contains("deprecated")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_cuda_source_compiles_for_every_board() {
    let nvrtc = nvrtc();
    let include = include_dir();
    let archs = target_archs(&nvrtc);
    let (major, minor) = nvrtc.version();
    eprintln!("NVRTC {major}.{minor}, supported {:?}, compiling for {archs:?}", nvrtc.supported_archs());

    let mut failures = Vec::new();
    for path in cuda_sources() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let source =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for &arch in &archs {
            match nvrtc.compile_ptx(&source, &name, arch, std::slice::from_ref(&include)) {
                Ok(ptx) => {
                    assert!(ptx.ptx.contains(".entry"), "{name} for compute_{arch}: PTX has no kernel");
                    let warnings = unexpected_warnings(&ptx.log, arch);
                    if !warnings.is_empty() {
                        failures.push(format!("{name} for compute_{arch} warns:\n{warnings}"));
                    }
                    eprintln!("{name}: compute_{arch} ok, {} bytes of PTX", ptx.ptx.len());
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn ggem_ptx_exports_both_kernels() {
    let nvrtc = nvrtc();
    let include = include_dir();
    for arch in target_archs(&nvrtc) {
        let ptx = nvrtc
            .compile_ptx(ggem::SOURCE, ggem::SOURCE_NAME, arch, std::slice::from_ref(&include))
            .unwrap_or_else(|e| panic!("{e}"));
        for kernel in ggem::KERNELS {
            // `.entry name(` so that ggem_f16 does not match ggem_f16_other.
            let entry = format!(".entry {kernel}(");
            assert!(ptx.ptx.contains(&entry), "compute_{arch}: PTX lacks `{entry}`");
        }
        // The loads are 128 bits wide (one per lane for fp16, two for fp32).
        assert!(
            ptx.ptx.contains("ld.global.nc.v4.u32") || ptx.ptx.contains("ld.global.nc.v4.b32"),
            "compute_{arch}: no 128-bit fp16 load in the PTX"
        );
        assert!(ptx.ptx.contains("ld.global.nc.v4.f32"), "compute_{arch}: no 128-bit fp32 load in the PTX");
    }
}

#[test]
fn sources_list_matches_the_cuda_directory() {
    let on_disk: Vec<String> =
        cuda_sources().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let listed: Vec<&str> = SOURCES.iter().map(|(name, _)| *name).collect();
    assert_eq!(on_disk, listed, "edgevit_kernels::SOURCES must list every file under kernels/cuda/");
    for (name, source) in SOURCES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda").join(name);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            *source,
            "{name} differs from the embedded source"
        );
    }
}
