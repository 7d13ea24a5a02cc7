//! Every `.cu` under `kernels/cuda/` compiles with NVRTC to PTX for every
//! board architecture. Needs no GPU, but does need NVRTC and the CUDA runtime
//! headers: `tools/test.sh` installs both (pinned PyPI wheels in
//! `.venv-cuda/`) and exports `LD_LIBRARY_PATH` and `EDGEVIT_CUDA_INCLUDE`.
//! Without them these tests fail rather than skip, so a machine that cannot
//! check the kernels never passes as one that did.

use std::path::{Path, PathBuf};

use edgevit_kernels::nvrtc::{include_dirs_from_env, BOARD_ARCHS};
use edgevit_kernels::{ggem, Nvrtc, SOURCES};

const SETUP: &str = "run tools/test.sh, which installs NVRTC and the CUDA headers into .venv-cuda/ \
     and exports LD_LIBRARY_PATH and EDGEVIT_CUDA_INCLUDE";

fn nvrtc() -> Nvrtc {
    Nvrtc::load().unwrap_or_else(|e| panic!("cannot load NVRTC: {e}; {SETUP}"))
}

fn include_dirs() -> Vec<PathBuf> {
    include_dirs_from_env().unwrap_or_else(|e| panic!("no CUDA headers: {e}; {SETUP}"))
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
    let include = include_dirs();
    let archs = target_archs(&nvrtc);
    let (major, minor) = nvrtc.version();
    eprintln!("NVRTC {major}.{minor}, supported {:?}, compiling for {archs:?}", nvrtc.supported_archs());

    let mut failures = Vec::new();
    for path in cuda_sources() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let source =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for &arch in &archs {
            match nvrtc.compile_ptx(&source, &name, arch, &include) {
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
    let include = include_dirs();
    for arch in target_archs(&nvrtc) {
        let ptx = nvrtc
            .compile_ptx(ggem::SOURCE, ggem::SOURCE_NAME, arch, &include)
            .unwrap_or_else(|e| panic!("{e}"));
        for kernel in ggem::KERNELS {
            // `.entry name(` so that ggem_f16 does not match ggem_f16_other.
            let entry = format!(".entry {kernel}(");
            assert!(ptx.ptx.contains(&entry), "compute_{arch}: PTX lacks `{entry}`");
            // The parameter list the launch passes.
            assert_eq!(
                ggem::ptx_params(&ptx.ptx, kernel).unwrap(),
                ggem::PTX_PARAMS,
                "compute_{arch}: {kernel}'s parameters"
            );
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

/// What ptxas reports for one kernel: its registers per thread, spilled
/// bytes, and static shared memory.
#[derive(Debug, Default, PartialEq, Eq)]
struct Resources {
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
    stack: u32,
    smem: u32,
}

/// The number before `unit` in `line` (`0 bytes spill stores` -> 0).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let head = &line[..line.find(unit)?];
    head.split([' ', ',']).rfind(|w| !w.is_empty())?.parse().ok()
}

/// Parses `ptxas -v`'s report into resources per kernel.
fn parse_ptxas(report: &str) -> std::collections::BTreeMap<String, Resources> {
    let mut kernels = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            kernels.insert(name.clone(), Resources::default());
            current = Some(name);
            continue;
        }
        let Some(r) = current.as_ref().and_then(|name| kernels.get_mut(name)) else { continue };
        if line.contains("bytes stack frame") {
            r.stack = number_before(line, "bytes stack frame").unwrap_or(u32::MAX);
            r.spill_stores = number_before(line, "bytes spill stores").unwrap_or(u32::MAX);
            r.spill_loads = number_before(line, "bytes spill loads").unwrap_or(u32::MAX);
        }
        if line.contains("Used ") && line.contains(" registers") {
            r.registers = number_before(line, "registers").unwrap_or(u32::MAX);
            r.smem = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    kernels
}

/// The registers of one SM's file, which one block's threads share on every
/// architecture edgevit ships for (7.2 to 11.0).
const REGISTERS_PER_BLOCK: u32 = 65_536;
/// Static shared memory a block may declare without opting in.
const STATIC_SMEM: u32 = 48 << 10;

/// The GGeM kernels assembled to SASS by ptxas for Xavier, Orin and Hopper:
/// no spills, and the largest block the launch uses fits the register file
/// and the static shared memory. ptxas comes with NVIDIA's nvcc wheel,
/// which `tools/test.sh` installs and names in `EDGEVIT_PTXAS`. The numbers
/// printed are the ones doc/kernels.md records.
#[test]
fn ggem_assembles_without_spills_within_the_launch_limits() {
    let ptxas =
        std::env::var_os("EDGEVIT_PTXAS").unwrap_or_else(|| panic!("EDGEVIT_PTXAS is not set; {SETUP}"));
    let nvrtc = nvrtc();
    let include = include_dirs();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for arch in BOARD_ARCHS {
        let ptx = nvrtc
            .compile_ptx(ggem::SOURCE, ggem::SOURCE_NAME, arch, &include)
            .unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join(format!("ggem-{arch}.ptx"));
        std::fs::write(&file, &ptx.ptx).unwrap();
        let out = std::process::Command::new(&ptxas)
            .arg(format!("-arch=sm_{arch}"))
            .arg("-v")
            .arg("-o")
            .arg(dir.path().join(format!("ggem-{arch}.cubin")))
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}; {SETUP}", ptxas.to_string_lossy()));
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ptxas for sm_{arch} failed:\n{report}");
        let kernels = parse_ptxas(&report);
        for kernel in ggem::KERNELS {
            let Some(r) = kernels.get(kernel) else {
                failures.push(format!("sm_{arch}: ptxas reported nothing for {kernel}:\n{report}"));
                continue;
            };
            eprintln!(
                "sm_{arch} {kernel}: {} registers, {} bytes smem, {} bytes stack, spills {} / {} bytes",
                r.registers, r.smem, r.stack, r.spill_stores, r.spill_loads
            );
            if r.registers == 0 || r.registers == u32::MAX {
                failures.push(format!("sm_{arch} {kernel}: no register count in:\n{report}"));
            }
            if r.spill_stores != 0 || r.spill_loads != 0 {
                failures.push(format!("sm_{arch} {kernel}: spills {r:?}"));
            }
            if r.registers.saturating_mul(ggem::MAX_THREADS) > REGISTERS_PER_BLOCK {
                failures.push(format!(
                    "sm_{arch} {kernel}: {} registers x {} threads exceeds {REGISTERS_PER_BLOCK}",
                    r.registers,
                    ggem::MAX_THREADS
                ));
            }
            if r.smem > STATIC_SMEM {
                failures.push(format!("sm_{arch} {kernel}: {} bytes of static shared memory", r.smem));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ptxas_reports_parse() {
    let report = "ptxas info    : 0 bytes gmem\n\
        ptxas info    : Compiling entry function 'ggem_f16' for 'sm_87'\n\
        ptxas info    : Function properties for ggem_f16\n    \
        8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
        ptxas info    : Used 40 registers, used 1 barriers, 16385 bytes smem, 400 bytes cmem[0]\n";
    let kernels = parse_ptxas(report);
    let want = Resources { registers: 40, spill_stores: 4, spill_loads: 4, stack: 8, smem: 16385 };
    assert_eq!(kernels["ggem_f16"], want);
}
