//! Cross-compiling `edgevit` for a board: its target triple, linked against
//! a glibc no newer than the board's floor, then checked by reading the
//! binary's version needs.
//!
//! Zig is the C compiler and linker (the `ziglang` wheel from PyPI in
//! `.venv/`, driven through `cargo-zigbuild zig cc`, which adapts rustc's
//! linker arguments to zig). Zig links against the glibc version named in its
//! target (`aarch64-linux-gnu.2.31`), whatever the build machine has.
//!
//! One target directory per triple, `target/cross/<triple>/`, shared by every
//! floor: the compiled crates do not depend on the floor, only the final link
//! does. The linker is a wrapper script with a fixed path that reads the
//! floor from the environment, so cargo sees the same configuration for every
//! floor and keeps the dependencies. The floor also goes to the binary's own
//! rustc invocation (`--cfg edgevit_glibc="2.31"`): cargo hashes those
//! arguments into that one unit, so each floor gets its own binary, linked
//! when its floor is first asked for and kept beside the others. C code in
//! dependencies is compiled once, with the floor of the first build; a
//! symbol it needs that a lower floor lacks fails the link, and the version
//! check below catches the rest.
//!
//! Builds of one triple are serialized by a lock file held from the cargo
//! run until the binary has been read, so two floors never race for the
//! one output path.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgevit::Board;
use indicatif::ProgressBar;

use crate::elf::{self, GlibcVersion, Needs};

/// The cargo profile a firmware binary is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Debug assertions on, dependencies at opt-level 1 (the host's dev
    /// profile has 2): the quicker build, for tests and development images.
    Dev,
    /// Fully optimized: what ships.
    Release,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Dev => "dev",
            Profile::Release => "release",
        }
    }

    /// Settings over the workspace's profile. A cross build compiles every
    /// dependency again for the board, none shared with the host's build:
    /// a dev image's are optimized less, for the shorter build.
    fn config(self) -> &'static [&'static str] {
        match self {
            Profile::Dev => &["profile.dev.package.\"*\".opt-level=1"],
            Profile::Release => &[],
        }
    }

    /// The directory cargo writes the profile's outputs to.
    fn dir(self) -> &'static str {
        match self {
            Profile::Dev => "debug",
            Profile::Release => "release",
        }
    }
}

/// A cross-compiled, stripped `edgevit` that passed the floor check.
#[derive(Clone, Debug)]
pub struct CrossBinary {
    pub bytes: Vec<u8>,
    pub needs: Needs,
    pub floor: GlibcVersion,
    /// Wall time of the cargo run.
    pub took: Duration,
}

/// Where the cross toolchain lives.
struct Toolchain {
    /// `.venv/bin`, which holds the Python whose `-m ziglang` is zig.
    venv_bin: PathBuf,
}

/// Builds `edgevit` from the workspace at `workspace` for `board`.
///
/// Needs zig in `workspace/.venv/`, `cargo-zigbuild` on `PATH` and the
/// Rust standard library for the board's target (`tools/cross-setup.sh`
/// installs all three). Fails when the binary is not for the board's
/// architecture or needs a glibc newer than the board's floor.
pub fn build(
    workspace: &Path,
    board: &Board,
    profile: Profile,
    progress: &ProgressBar,
) -> Result<CrossBinary> {
    let target = board.target.as_str();
    let floor = GlibcVersion::parse(&board.glibc)
        .with_context(|| format!("board {}: expected glibc as MAJOR.MINOR", board.name))?;
    let arch = target.split('-').next().unwrap_or_default();
    let toolchain = toolchain(workspace, target)?;

    let target_dir = workspace.join("target/cross").join(target);
    let zig_dir = target_dir.join("zig");
    fs::create_dir_all(&zig_dir).with_context(|| format!("{}: cannot create", zig_dir.display()))?;
    let cc = zig_dir.join("cc");
    let ar = zig_dir.join("ar");
    write_script(&cc, CC_WRAPPER)?;
    write_script(&ar, AR_WRAPPER)?;
    let _lock = lock(&target_dir.join("build.lock"))?;

    let env_target = target.replace('-', "_");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    // Paths of this machine must not reach the binary (panic locations):
    // the same sources give the same bytes in any checkout.
    let rustflags = [
        format!("--remap-path-prefix={}=/edgevit", workspace.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
    .join("\x1f");
    let mut path = OsString::from(&toolchain.venv_bin);
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }

    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(workspace)
        .args(["rustc", "--locked", "-p", "edgevit", "--bin", "edgevit", "--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--profile", profile.name()])
        .args(profile.config().iter().flat_map(|c| ["--config", c]))
        .arg("--")
        .args(["-C", "strip=symbols"])
        .arg(format!("--cfg=edgevit_glibc=\"{floor}\""))
        .arg("--check-cfg=cfg(edgevit_glibc,values(any()))")
        .env("PATH", path)
        .env("EDGEVIT_ZIG_TARGET", format!("{arch}-linux-gnu.{floor}"))
        .env(format!("CC_{env_target}"), &cc)
        .env(format!("AR_{env_target}"), &ar)
        .env(format!("CARGO_TARGET_{}_LINKER", env_target.to_uppercase()), &cc)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());

    let started = Instant::now();
    let what = format!("{target} with glibc {floor}, {} profile", profile.name());
    progress.set_message(format!("cross build: {what}"));
    let mut child = command.spawn().context("cannot run cargo")?;
    let mut tail = VecDeque::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line.context("reading cargo's output")?;
        let trimmed = line.trim();
        if trimmed.starts_with("Compiling ") {
            progress.set_message(format!("cross build: {what}: {trimmed}"));
        }
        if tail.len() == 40 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().context("waiting for cargo")?;
    let took = started.elapsed();
    if !status.success() {
        let log: Vec<String> = tail.into_iter().collect();
        bail!("cross build for {what} failed ({status}); cargo's last lines:\n{}", log.join("\n"));
    }

    let binary = target_dir.join(target).join(profile.dir()).join("edgevit");
    let bytes = fs::read(&binary).with_context(|| format!("{}: cannot read", binary.display()))?;
    let needs = elf::needs(&bytes).with_context(|| format!("{}", binary.display()))?;
    if needs.arch != arch {
        bail!("{}: expected an {arch} binary but it is {}", binary.display(), needs.arch);
    }
    needs.check(&floor).with_context(|| format!("board {} ({})", board.name, binary.display()))?;
    Ok(CrossBinary { bytes, needs, floor, took })
}

/// Zig as C compiler and linker, for the glibc the build names in
/// `EDGEVIT_ZIG_TARGET`. The arguments before `"$@"` are those
/// `cargo zigbuild` gives its own wrapper.
const CC_WRAPPER: &str = r#"#!/bin/sh
# Written by edgevit-tools firmware build (tools/src/cross.rs).
exec cargo-zigbuild zig cc -- -g -fno-sanitize=all -target "${EDGEVIT_ZIG_TARGET:?set by edgevit-tools}" "$@"
"#;

const AR_WRAPPER: &str = r#"#!/bin/sh
# Written by edgevit-tools firmware build (tools/src/cross.rs).
exec cargo-zigbuild zig ar -- "$@"
"#;

/// Writes an executable script unless it already holds `text`.
fn write_script(path: &Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    fs::write(path, text)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Finds zig, cargo-zigbuild and the target's standard library, saying
/// which is missing and how to get it.
fn toolchain(workspace: &Path, target: &str) -> Result<Toolchain> {
    let setup = "tools/cross-setup.sh installs it";
    let venv = workspace.join(".venv");
    fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/ziglang"))
        .find(|z| z.join("zig").is_file())
        .with_context(|| {
            format!("zig not found: expected the ziglang wheel in {} ({setup})", venv.display())
        })?;
    if !on_path("cargo-zigbuild") {
        bail!("cargo-zigbuild not found on PATH ({setup})");
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .current_dir(workspace)
        .args(["--print", "sysroot"])
        .stderr(Stdio::inherit())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .context("cannot run rustc --print sysroot")?;
    if !sysroot.join("lib/rustlib").join(target).join("lib").is_dir() {
        bail!(
            "the Rust standard library for {target} is not installed in {} \
             (rustup target add {target}; {setup})",
            sysroot.display()
        );
    }
    Ok(Toolchain { venv_bin: venv.join("bin") })
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// An exclusive lock on `path`, released when the file is dropped.
fn lock(path: &Path) -> Result<File> {
    let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns; it only
    // changes the advisory lock, released when the descriptor is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{}: cannot lock", path.display()));
    }
    Ok(file)
}
