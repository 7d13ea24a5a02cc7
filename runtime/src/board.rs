//! Board profiles: what a device is (target, glibc floor, GPU) and how
//! edgevit runs on it by default (backend, threads, camera and display
//! URIs).
//!
//! The profiles of `boards/*.toml` are compiled in; on a device the runtime
//! reads `/etc/edgevit/board.toml`, which a firmware image installs.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Where a device keeps its own profile.
pub const DEVICE_BOARD_FILE: &str = "/etc/edgevit/board.toml";

/// The lowest CUDA driver version our build of tract's CUDA runtime accepts:
/// the API version it binds (`cuda-12020` in Cargo.toml), Orin's JetPack 6.0.
pub const MIN_GPU_CUDA: (u32, u32) = (12, 2);

/// A board profile is a page of TOML.
const MAX_BOARD_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    /// The family bundles name in their `compatible` list.
    pub compatible: String,
    /// Rust target triple of the board's userland.
    pub target: String,
    /// Newest glibc the board's OS ships: binaries must need nothing newer.
    pub glibc: String,
    /// CUDA compute capability as `major * 10 + minor` (87 for sm_87), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_arch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetpack: Option<String>,
    /// CUDA version of the board's driver stack, e.g. `12.6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<String>,
    pub backend: BackendChoice,
    /// CPU threads for inference; 0 means every available core.
    pub threads: u32,
    /// Default input URI of `edgevit run`.
    pub camera: String,
    /// Default output URI of `edgevit run`.
    pub display: String,
}

/// The backend asked for, by `--backend` or as a board's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// tract's CPU runtime.
    Cpu,
    /// The GPU; an error where it cannot run.
    Cuda,
    /// CUDA when it works on this device and board, else CPU.
    Auto,
}

/// `MAJOR.MINOR` (a trailing `.PATCH` is allowed and ignored).
fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    parts.next().map_or(Some(()), |p| p.parse::<u32>().ok().map(|_| ()))?;
    parts.next().is_none().then_some((major, minor))
}

impl Board {
    /// Parses and checks a profile; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Board> {
        let board: Board =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("board {origin}: {}", e.message()))?;
        board.check().with_context(|| format!("board {origin}"))?;
        Ok(board)
    }

    /// Reads the profile at `path`.
    pub fn load(path: &Path) -> Result<Board> {
        let bytes = crate::fsutil::read_regular(path, MAX_BOARD_BYTES, "board")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("board {}: expected UTF-8 text", path.display()))?;
        Board::parse(&text, &path.display().to_string())
    }

    fn check(&self) -> Result<()> {
        if self.name.is_empty() || self.compatible.is_empty() {
            bail!("expected a name and a compatible family");
        }
        if major_minor(&self.glibc).is_none() {
            bail!("expected glibc as MAJOR.MINOR but found {:?}", self.glibc);
        }
        if let Some(cuda) = &self.cuda {
            if major_minor(cuda).is_none() {
                bail!("expected cuda as MAJOR.MINOR but found {cuda:?}");
            }
        }
        if self.cuda.is_some() != self.cuda_arch.is_some() {
            bail!("expected cuda and cuda_arch together (a GPU has both) or neither");
        }
        if self.backend != BackendChoice::Cpu && self.cuda.is_some() && !self.gpu_path() {
            bail!(
                "backend {:?} needs CUDA >= {}.{} (tract's CUDA runtime) but the board has CUDA {}",
                self.backend,
                MIN_GPU_CUDA.0,
                MIN_GPU_CUDA.1,
                self.cuda.as_deref().unwrap_or_default()
            );
        }
        for (what, uri) in [("camera", &self.camera), ("display", &self.display)] {
            if !uri.contains("://") {
                bail!("expected {what} as a URI like scheme://... but found {uri:?}");
            }
        }
        Ok(())
    }

    /// Whether the board's CUDA stack is new enough for the GPU path.
    pub fn gpu_path(&self) -> bool {
        self.cuda.as_deref().and_then(major_minor).is_some_and(|v| v >= MIN_GPU_CUDA)
    }

    /// Whether a bundle listing `compatible` families fits this board.
    pub fn fits(&self, compatible: &[String]) -> bool {
        compatible.iter().any(|c| c == "any" || *c == self.compatible || *c == self.name)
    }

    /// [`Board::fits`] as an error naming the bundle, its families and the board.
    pub fn check_fits(&self, bundle: &crate::bundle::Bundle) -> Result<()> {
        let compatible = &bundle.manifest.compatible;
        if !self.fits(compatible) {
            bail!(
                "bundle {}: fits {} but this board is {} (family {})",
                bundle.origin,
                compatible.join(", "),
                self.name,
                self.compatible
            );
        }
        Ok(())
    }

    /// The profiles shipped in `boards/`, by name.
    pub fn builtin() -> Vec<Board> {
        BUILTIN
            .iter()
            .map(|(file, text)| Board::parse(text, file).expect("shipped board profiles are valid"))
            .collect()
    }

    /// The shipped profile called `name`.
    pub fn named(name: &str) -> Result<Board> {
        let boards = Board::builtin();
        match boards.iter().find(|b| b.name == name) {
            Some(b) => Ok(b.clone()),
            None => {
                let names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
                bail!("board {name}: expected one of {}", names.join(", "))
            }
        }
    }
}

macro_rules! shipped {
    ($($name:literal),* $(,)?) => {
        &[$((concat!("boards/", $name, ".toml"), include_str!(concat!("../../boards/", $name, ".toml")))),*]
    };
}

const BUILTIN: &[(&str, &str)] = shipped!(
    "jetson-orin-nano",
    "jetson-orin-nx",
    "jetson-agx-orin",
    "jetson-thor",
    "jetson-xavier-nx",
    "jetson-agx-xavier",
    "jetson-nano",
    "jetson-tx2",
    "raspberry-pi-5",
    "x86_64-host",
);

/// Which board profile applies.
#[derive(Debug, clap::Args)]
pub struct BoardArgs {
    /// Use this shipped board profile (see `edgevit boards`).
    #[arg(long, value_name = "NAME", conflicts_with = "board_file")]
    pub board: Option<String>,
    /// Use the board profile in this file instead of /etc/edgevit/board.toml.
    #[arg(long, value_name = "FILE")]
    pub board_file: Option<std::path::PathBuf>,
}

impl BoardArgs {
    /// The profile in force: `--board`, `--board-file`, else the device's own
    /// file when it exists, else none (a development machine).
    pub fn current(&self) -> Result<Option<Board>> {
        if let Some(name) = &self.board {
            return Board::named(name).map(Some);
        }
        if let Some(path) = &self.board_file {
            return Board::load(path).map(Some);
        }
        let device = Path::new(DEVICE_BOARD_FILE);
        if device.exists() {
            return Board::load(device).map(Some);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_parses_and_the_list_is_complete() {
        let names: Vec<String> = Board::builtin().into_iter().map(|b| b.name).collect();
        let mut files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../boards"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, files, "boards/*.toml and the compiled-in list differ");
    }

    #[test]
    fn gpu_path_only_where_cuda_is_12_or_newer() {
        let gpu: Vec<String> = Board::builtin().into_iter().filter(Board::gpu_path).map(|b| b.name).collect();
        assert_eq!(gpu, ["jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-thor"]);
        let nano = Board::named("jetson-nano").unwrap();
        assert_eq!(
            (nano.cuda_arch, nano.glibc.as_str(), nano.backend),
            (Some(53), "2.27", BackendChoice::Cpu)
        );
        let xavier = Board::named("jetson-xavier-nx").unwrap();
        assert_eq!((xavier.cuda_arch, xavier.glibc.as_str()), (Some(72), "2.31"));
        assert_eq!(Board::named("jetson-orin-nx").unwrap().cuda_arch, Some(87));
        assert_eq!(Board::named("jetson-thor").unwrap().cuda_arch, Some(110));
    }

    #[test]
    fn bad_profiles_are_one_clear_error() {
        let good = include_str!("../../boards/jetson-orin-nano.toml");
        let err = |text: &str| format!("{:#}", Board::parse(text, "x.toml").unwrap_err());
        assert!(err(&format!("{good}turbo = true\n")).contains("unknown field `turbo`"));
        assert!(err(&format!("{good}memory_mb = 8192\n")).contains("unknown field `memory_mb`"));
        assert!(err("name = \"x\n").starts_with("board x.toml: "));
        assert!(err(&good.replace("glibc = \"2.35\"", "glibc = \"new\""))
            .contains("expected glibc as MAJOR.MINOR"));
        assert!(err(&good.replace("cuda = \"12.6\"", "cuda = \"11.4\"")).contains("needs CUDA >= 12.2"));
        assert!(err(&good.replace("cuda_arch = 87\n", "")).contains("cuda and cuda_arch together"));
        assert!(err(&good.replace("v4l2:///dev/video0", "/dev/video0")).contains("expected camera as a URI"));
        assert!(format!("{:#}", Board::named("jetson-orin-max").unwrap_err())
            .contains("expected one of jetson-orin-nano"));
    }

    #[test]
    fn bundles_fit_by_family_name_or_any() {
        let orin = Board::named("jetson-orin-nx").unwrap();
        assert!(orin.fits(&["any".into()]));
        assert!(orin.fits(&["jetson-orin".into()]));
        assert!(orin.fits(&["raspberry-pi-5".into(), "jetson-orin-nx".into()]));
        assert!(!orin.fits(&["jetson-xavier".into()]));
    }
}
