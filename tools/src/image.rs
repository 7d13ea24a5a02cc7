//! `firmware build`: one board's firmware image, from source to signed tar.
//!
//! The steps: cross-compile `edgevit` for the board under its glibc floor
//! ([`crate::cross`]), compile the CUDA kernels to PTX for its GPU when it
//! has the GPU path, lay out the device's tree in a staging directory, and
//! [`pack`](crate::firmware::pack) it. The tree, as the device runs it
//! (doc/boards.md):
//!
//! ```text
//! usr/bin/edgevit                        stripped, for the board's target
//! usr/lib/edgevit/kernels/sm_XX/*.ptx    GPU-path boards only, <stem>-<source hash>.ptx
//! etc/edgevit/board.toml                 boards/<board>.toml, verbatim
//! etc/edgevit/keys/*.pub                 the signing key's public half, --trust keys
//! etc/edgevit/ca/*.pem, *.crt            the --ca certificates, for https:// updates
//! etc/systemd/system/edgevit.service     boards/edgevit.service
//! var/lib/edgevit/slots/a/               the bundle, as verified
//! var/lib/edgevit/current -> slots/a
//! ```
//!
//! The bundle must verify with the keys the image trusts and fit the board,
//! or the device could not load it. Nothing is written to the output
//! directory but the finished image: staging lives in a temporary directory
//! that is removed on every path out.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use edgevit::{Board, Bundle, SecretKey, SignaturePolicy, TrustStore};
use edgevit_kernels::{nvrtc, Nvrtc};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cross::{self, Profile};
use crate::firmware::{self, PackSummary};

/// What `firmware build` is asked to make.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// Source tree `edgevit` is built from (holds `boards/`).
    pub workspace: PathBuf,
    pub board: String,
    pub bundle: PathBuf,
    /// Signing key file (`.key`); its public half is trusted on the device.
    pub key: PathBuf,
    /// Further public keys the device trusts.
    pub trust: Vec<PathBuf>,
    /// CA certificate files the device trusts for `https://` updates.
    pub ca: Vec<PathBuf>,
    pub profile: Profile,
    /// Directory the image is written to (created when missing).
    pub out: PathBuf,
}

/// What `firmware build` made.
#[derive(Clone, Debug)]
pub struct BuildSummary {
    pub board: Board,
    pub profile: Profile,
    pub binary_bytes: u64,
    pub arch: &'static str,
    pub glibc_needed: Option<String>,
    pub cross_build: Duration,
    /// `sm_87`, the virtual architecture of its PTX (`compute_87`) and the
    /// PTX files written for it, when the board has the GPU path.
    pub kernels: Option<(String, String, Vec<String>)>,
    pub nvrtc: Option<(i32, i32)>,
    pub pack: PackSummary,
}

impl fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.board;
        writeln!(f, "firmware image for {} ({}, {} profile)", b.name, b.target, self.profile.name())?;
        writeln!(
            f,
            "  binary   usr/bin/edgevit: {} stripped, {}, cross build took {:.0} s",
            bytes(self.binary_bytes),
            self.arch,
            self.cross_build.as_secs_f64()
        )?;
        let needed = self.glibc_needed.as_deref().map_or("none".to_string(), |v| format!("GLIBC_{v}"));
        writeln!(f, "  glibc    needs {needed} at most; floor {}", b.glibc)?;
        match (&self.kernels, self.nvrtc) {
            (Some((arch, target, files)), Some((major, minor))) => writeln!(
                f,
                "  kernels  usr/lib/edgevit/kernels/{arch}/: {} ({target} PTX, NVRTC {major}.{minor})",
                files.join(", ")
            )?,
            _ => writeln!(f, "  kernels  none (the board runs on the CPU)")?,
        }
        let p = &self.pack;
        writeln!(
            f,
            "  image    {}: {}, {} entries, signed by key {}",
            p.image.display(),
            bytes(p.image_bytes),
            p.entries(),
            p.key_id
        )?;
        write!(f, "  sha256   {}", p.sha256)
    }
}

/// `12345678 bytes (11.8 MiB)`.
fn bytes(n: u64) -> String {
    format!("{n} bytes ({:.1} MiB)", n as f64 / (1u64 << 20) as f64)
}

/// The image file `build` writes for `board` in `out`.
pub fn image_path(out: &Path, board: &str) -> PathBuf {
    out.join(format!("edgevit-{board}.tar"))
}

/// Builds the firmware image for `request.board`; see the module docs.
pub fn build(request: &BuildRequest) -> Result<BuildSummary> {
    let workspace = fs::canonicalize(&request.workspace)
        .with_context(|| format!("source tree {}: cannot read", request.workspace.display()))?;
    Board::named(&request.board)?;
    let board_file = workspace.join("boards").join(format!("{}.toml", request.board));
    let board_text = fs::read_to_string(&board_file)
        .with_context(|| format!("board {}: cannot read", board_file.display()))?;
    let board = Board::parse(&board_text, &board_file.display().to_string())?;
    let unit_file = workspace.join("boards/edgevit.service");
    let unit = fs::read(&unit_file).with_context(|| format!("{}: cannot read", unit_file.display()))?;

    let key = SecretKey::load(&request.key)?;
    let (keys, trust) = trusted_keys(&request.key, &key, &request.trust)?;
    let bundle = Bundle::open(&request.bundle, &trust, SignaturePolicy::Require)?;
    board.check_fits(&bundle)?;
    let cas = ca_files(&request.ca)?;

    // The PTX step is quick and fails for reasons unrelated to the build
    // (no NVRTC): run it before anything is written.
    let kernels = prebuild_ptx(&board)?;

    fs::create_dir_all(&request.out).with_context(|| format!("{}: cannot create", request.out.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".edgevit-staging-")
        .tempdir_in(&request.out)
        .with_context(|| format!("{}: cannot create a staging directory", request.out.display()))?;
    let root = staging.path();

    let progress = spinner();
    let binary = cross::build(&workspace, &board, request.profile, &progress);
    progress.finish_and_clear();
    let binary = binary?;

    let write = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("relative paths have a parent"))
            .and_then(|()| fs::write(&path, bytes))
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(mode)))
            .with_context(|| format!("staging {rel}: cannot write"))
    };
    write("usr/bin/edgevit", &binary.bytes, 0o755)?;
    if let Some(k) = &kernels {
        for (file, ptx) in &k.files {
            write(&format!("usr/lib/edgevit/kernels/{}/{file}", k.arch), ptx.as_bytes(), 0o644)?;
        }
    }
    write("etc/edgevit/board.toml", board_text.as_bytes(), 0o644)?;
    for (name, text) in &keys {
        write(&format!("etc/edgevit/keys/{name}"), text.as_bytes(), 0o644)?;
    }
    for (name, bytes) in &cas {
        write(&format!("etc/edgevit/ca/{name}"), bytes, 0o644)?;
    }
    write("etc/systemd/system/edgevit.service", &unit, 0o644)?;
    let state = root.join("var/lib/edgevit");
    fs::create_dir_all(state.join("slots")).context("staging var/lib/edgevit/slots: cannot create")?;
    bundle.write_dir(&state.join("slots/a"), &mut |_| {}).context("staging var/lib/edgevit/slots/a")?;
    std::os::unix::fs::symlink("slots/a", state.join("current"))
        .context("staging var/lib/edgevit/current: cannot create")?;

    let progress = spinner();
    let image = image_path(&request.out, &board.name);
    progress.set_message(format!("packing {}", image.display()));
    let pack = firmware::pack(root, &key, &image);
    progress.finish_and_clear();
    let pack = pack?;
    drop(staging);

    Ok(BuildSummary {
        profile: request.profile,
        binary_bytes: binary.bytes.len() as u64,
        arch: binary.needs.arch,
        glibc_needed: binary.needs.newest().map(ToString::to_string),
        cross_build: binary.took,
        nvrtc: kernels.as_ref().map(|k| k.nvrtc),
        kernels: kernels.map(|k| (k.arch, k.target, k.files.into_keys().collect())),
        board,
        pack,
    })
}

fn spinner() -> ProgressBar {
    let progress = ProgressBar::new_spinner();
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}").expect("a valid template"),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    progress
}

/// The public keys the image trusts, as `(file name, text)` under
/// `etc/edgevit/keys/`, and the same keys as a store: the signing key's
/// public half (`K.key` gives `K.pub`) and each `--trust` file, verbatim.
/// A name used twice is an error unless both hold the same key.
fn trusted_keys(
    key_file: &Path,
    key: &SecretKey,
    trust: &[PathBuf],
) -> Result<(BTreeMap<String, String>, TrustStore)> {
    let stem = key_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut store = TrustStore::default();
    store.add(key.public(), key_file.display().to_string());
    let signing = format!("{stem}.pub");
    let mut files = BTreeMap::new();
    files.insert(
        signing.clone(),
        format!(
            "# edgevit public key of {stem}.key, which signed this image\n{}\n",
            hex::encode(key.public())
        ),
    );
    for file in trust {
        let one = TrustStore::load(std::slice::from_ref(file), None)?;
        let text = fs::read_to_string(file)
            .with_context(|| format!("public key {}: cannot read", file.display()))?;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.ends_with(".pub") {
            bail!("public key {}: expected a name ending in .pub", file.display());
        }
        let same = match files.get(&name) {
            None => false,
            Some(_) if name == signing => {
                let probe = b"edgevit firmware key probe";
                one.verify(probe, &key.sign(probe)).is_some()
            }
            Some(existing) => *existing == text,
        };
        if files.contains_key(&name) && !same {
            bail!("public key {}: another key is already named {name}", file.display());
        }
        if !same {
            store.add_file(file)?;
            files.insert(name, text);
        }
    }
    Ok((files, store))
}

/// The `--ca` files as `(file name, bytes)` under `etc/edgevit/ca/`: each
/// must hold CA certificates the device can use and be named as the device
/// reads them (`*.pem`, `*.crt`), each name once.
fn ca_files(files: &[PathBuf]) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for file in files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !(name.ends_with(".pem") || name.ends_with(".crt")) {
            bail!("CA certificate {}: expected a name ending in .pem or .crt", file.display());
        }
        edgevit::check_ca_file(file)?;
        let bytes =
            fs::read(file).with_context(|| format!("CA certificate {}: cannot read", file.display()))?;
        if out.insert(name.clone(), bytes).is_some() {
            bail!("CA certificate {}: another --ca file is already named {name}", file.display());
        }
    }
    Ok(out)
}

/// PTX for a GPU-path board: the architecture directory, the files, and the
/// NVRTC version that made them.
struct Kernels {
    arch: String,
    /// The virtual architecture the PTX is for (see [`ptx_target`]).
    target: String,
    files: BTreeMap<String, String>,
    nvrtc: (i32, i32),
}

/// The virtual architecture to compile a board's PTX for: its own where
/// this NVRTC knows it, else the newest of the shipped boards' below it,
/// which the board's driver JIT-compiles upward at first load (Thor, sm_110,
/// under CUDA 12.9's NVRTC, which names it compute_101 at most: compute_90,
/// the Hopper PTX the check machine also runs).
pub fn ptx_target(nvrtc: &Nvrtc, arch: u32) -> Option<u32> {
    if nvrtc.supports(arch) {
        return Some(arch);
    }
    nvrtc::BOARD_ARCHS.into_iter().filter(|&a| a < arch && nvrtc.supports(a)).max()
}

/// Compiles every CUDA source for the board's architecture, or nothing for
/// a board without the GPU path.
fn prebuild_ptx(board: &Board) -> Result<Option<Kernels>> {
    let Some(arch) = board.cuda_arch.filter(|_| board.gpu_path()) else { return Ok(None) };
    let why = || format!("board {} runs CUDA kernels (sm_{arch}) and needs their PTX", board.name);
    let compiler = Nvrtc::load().with_context(why)?;
    let (major, minor) = compiler.version();
    let target = ptx_target(&compiler, arch)
        .with_context(|| {
            format!("NVRTC {major}.{minor} compiles for none of {:?}", compiler.supported_archs())
        })
        .with_context(why)?;
    let include = nvrtc::include_dirs_from_env().map_err(anyhow::Error::msg).with_context(why)?;
    let progress = ProgressBar::new(edgevit_kernels::SOURCES.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:20} {pos}/{len} {wide_msg}").expect("a valid template"),
    );
    let mut files = BTreeMap::new();
    for (name, source) in edgevit_kernels::SOURCES {
        progress.set_message(format!("PTX: {name} for compute_{target}"));
        let compiled = compiler.compile_ptx(source, name, target, &include);
        let compiled = match compiled {
            Ok(c) => c,
            Err(e) => {
                progress.finish_and_clear();
                return Err(e).with_context(why);
            }
        };
        let stem = Path::new(name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        files.insert(edgevit_kernels::ptx::prebuilt_file_name(&stem, source), compiled.ptx);
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(Some(Kernels {
        arch: format!("sm_{arch}"),
        target: format!("compute_{target}"),
        files,
        nvrtc: compiler.version(),
    }))
}
