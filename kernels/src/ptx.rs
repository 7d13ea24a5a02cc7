//! PTX for one kernel source on one GPU: prebuilt for the board when the
//! image ships it, else compiled with NVRTC once and cached.
//!
//! A firmware image for a GPU-path board carries
//! `usr/lib/edgevit/kernels/sm_XX/<stem>-<hash>.ptx` ([`prebuilt_file_name`]),
//! built from the same sources as its binary, with `<hash>` a hash of the
//! source it was compiled from: a binary looks only for its own source's
//! PTX, so PTX left from another version of the source, whose kernels may
//! take other parameters, is never loaded. Anywhere else the first run
//! compiles the source and keeps the PTX under the cache directory, named by
//! the same hash, the architecture and the driver's CUDA version, so a new
//! source, GPU or driver compiles afresh and nothing stale is ever loaded.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where firmware images install prebuilt PTX, one `sm_XX/` per architecture.
pub const PREBUILT_DIR: &str = "/usr/lib/edgevit/kernels";

/// Overrides [`PREBUILT_DIR`].
pub const PREBUILT_ENV: &str = "EDGEVIT_KERNELS_DIR";

/// Overrides the cache directory (default `$XDG_CACHE_HOME/edgevit/kernels`,
/// else `~/.cache/edgevit/kernels`).
pub const CACHE_ENV: &str = "EDGEVIT_KERNEL_CACHE";

/// Where a kernel's PTX came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtxOrigin {
    /// Shipped with the image.
    Prebuilt(PathBuf),
    /// Compiled by an earlier run.
    Cached(PathBuf),
    /// Compiled now, and stored at the path for the next run, or not
    /// stored for the reason given (the PTX is good either way).
    Compiled(Result<PathBuf, String>),
}

impl fmt::Display for PtxOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PtxOrigin::Prebuilt(p) => write!(f, "prebuilt {}", p.display()),
            PtxOrigin::Cached(p) => write!(f, "cached {}", p.display()),
            PtxOrigin::Compiled(Ok(p)) => write!(f, "compiled with NVRTC, cached as {}", p.display()),
            PtxOrigin::Compiled(Err(why)) => write!(f, "compiled with NVRTC, not cached: {why}"),
        }
    }
}

/// The directories PTX is looked for in and cached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelStore {
    pub prebuilt: PathBuf,
    /// `None` when no cache directory can be named (no home, no override):
    /// every run then compiles.
    pub cache: Option<PathBuf>,
}

impl KernelStore {
    /// The store named by the environment, see [`PREBUILT_ENV`] and [`CACHE_ENV`].
    pub fn from_env() -> KernelStore {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let prebuilt = var(PREBUILT_ENV).unwrap_or_else(|| PREBUILT_DIR.into());
        let cache = var(CACHE_ENV).or_else(|| {
            var("XDG_CACHE_HOME")
                .filter(|p| p.is_absolute())
                .or_else(|| var("HOME").map(|h| h.join(".cache")))
                .map(|c| c.join("edgevit").join("kernels"))
        });
        KernelStore { prebuilt, cache }
    }

    /// The prebuilt PTX of `source` (file `<stem>.cu`) for `sm_<arch>`.
    pub fn prebuilt_path(&self, stem: &str, source: &str, arch: u32) -> PathBuf {
        self.prebuilt.join(format!("sm_{arch}")).join(prebuilt_file_name(stem, source))
    }

    /// The cache file of `source` compiled for `sm_<arch>` under a driver
    /// supporting CUDA `driver`.
    pub fn cache_path(&self, stem: &str, source: &str, arch: u32, driver: (u32, u32)) -> Option<PathBuf> {
        let name = format!("{stem}-{:016x}-sm_{arch}-cuda{}.{}.ptx", fnv1a(source), driver.0, driver.1);
        self.cache.as_ref().map(|c| c.join(name))
    }

    /// The PTX of `source` (file `<stem>.cu`) for `sm_<arch>`: prebuilt, else
    /// cached, else `compile()`d and cached. Only a compile error is an error.
    pub fn ptx<E>(
        &self,
        stem: &str,
        source: &str,
        arch: u32,
        driver: (u32, u32),
        compile: impl FnOnce() -> Result<String, E>,
    ) -> Result<(String, PtxOrigin), E> {
        let prebuilt = self.prebuilt_path(stem, source, arch);
        if let Ok(ptx) = std::fs::read_to_string(&prebuilt) {
            return Ok((ptx, PtxOrigin::Prebuilt(prebuilt)));
        }
        let cached = self.cache_path(stem, source, arch, driver);
        if let Some(path) = &cached {
            if let Ok(ptx) = std::fs::read_to_string(path) {
                return Ok((ptx, PtxOrigin::Cached(path.clone())));
            }
        }
        let ptx = compile()?;
        let stored = match cached {
            Some(path) => store(&path, &ptx).map(|()| path),
            None => Err("no cache directory (set HOME, XDG_CACHE_HOME or EDGEVIT_KERNEL_CACHE)".into()),
        };
        Ok((ptx, PtxOrigin::Compiled(stored)))
    }
}

/// The name under which a firmware image ships the PTX of `source` (file
/// `<stem>.cu`) in its architecture's directory: `<stem>-<hash>.ptx`, the
/// hash being the one that names the cache's files.
pub fn prebuilt_file_name(stem: &str, source: &str) -> String {
    format!("{stem}-{:016x}.ptx", fnv1a(source))
}

/// Writes `ptx` to `path` through a temporary file in the same directory,
/// so a reader sees the whole file or none.
fn store(path: &Path, ptx: &str) -> Result<(), String> {
    let dir = path.parent().ok_or_else(|| format!("{} has no directory", path.display()))?;
    let failed = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| failed("create", e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, ptx).map_err(|e| failed("write into", e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed("rename into", e)
    })
}

/// 64-bit FNV-1a: a cache key, not a checksum against tampering (the cache
/// is the user's own directory).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_in(dir: &Path) -> KernelStore {
        KernelStore { prebuilt: dir.join("prebuilt"), cache: Some(dir.join("cache")) }
    }

    #[test]
    fn compiles_once_then_reads_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        let compiled = store.ptx("k", "src", 87, (12, 6), || Ok::<_, String>("// ptx 1".into())).unwrap();
        let path = store.cache_path("k", "src", 87, (12, 6)).unwrap();
        assert_eq!(compiled, ("// ptx 1".into(), PtxOrigin::Compiled(Ok(path.clone()))));
        let again = store.ptx("k", "src", 87, (12, 6), || Err("must not compile".to_string())).unwrap();
        assert_eq!(again, ("// ptx 1".into(), PtxOrigin::Cached(path)));
    }

    #[test]
    fn source_architecture_and_driver_each_change_the_key() {
        let store = store_in(Path::new("/c"));
        let key = |src, arch, driver| store.cache_path("k", src, arch, driver).unwrap();
        let base = key("a", 87, (12, 6));
        assert!(base.starts_with("/c/cache"));
        for other in [key("b", 87, (12, 6)), key("a", 90, (12, 6)), key("a", 87, (13, 0))] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn prebuilt_ptx_wins_and_a_compile_error_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        let failed = store.ptx("k", "src", 72, (12, 6), || Err::<String, _>("nvrtc: bad".to_string()));
        assert_eq!(failed, Err("nvrtc: bad".to_string()));
        let prebuilt = store.prebuilt_path("k", "src", 72);
        assert!(prebuilt.ends_with(format!("prebuilt/sm_72/k-{:016x}.ptx", fnv1a("src"))), "{prebuilt:?}");
        std::fs::create_dir_all(prebuilt.parent().unwrap()).unwrap();
        std::fs::write(&prebuilt, "// shipped").unwrap();
        let got = store.ptx("k", "src", 72, (12, 6), || Err("must not compile".to_string())).unwrap();
        assert_eq!(got, ("// shipped".into(), PtxOrigin::Prebuilt(prebuilt)));
    }

    /// PTX shipped for another version of the source (which may declare
    /// other kernel parameters) is not loaded, nor is a file named after the
    /// stem alone: the source is compiled and cached instead.
    #[test]
    fn prebuilt_ptx_of_another_source_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        let old = store.prebuilt_path("k", "old src", 87);
        assert_ne!(old, store.prebuilt_path("k", "new src", 87));
        let unhashed = old.with_file_name("k.ptx");
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        std::fs::write(&old, "// old").unwrap();
        std::fs::write(&unhashed, "// old, unhashed").unwrap();
        let got = store.ptx("k", "new src", 87, (12, 6), || Ok::<_, String>("// new".into())).unwrap();
        let cached = store.cache_path("k", "new src", 87, (12, 6)).unwrap();
        assert_eq!(got, ("// new".into(), PtxOrigin::Compiled(Ok(cached))));
        // The old source still finds its own.
        let got = store.ptx("k", "old src", 87, (12, 6), || Err("must not compile".to_string())).unwrap();
        assert_eq!(got, ("// old".into(), PtxOrigin::Prebuilt(old)));
    }

    #[test]
    fn an_unwritable_cache_still_returns_the_ptx() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let store = KernelStore { prebuilt: dir.path().join("none"), cache: Some(blocker.join("cache")) };
        let (ptx, origin) = store.ptx("k", "src", 87, (12, 6), || Ok::<_, String>("// ptx".into())).unwrap();
        assert_eq!(ptx, "// ptx");
        assert!(
            matches!(origin, PtxOrigin::Compiled(Err(ref why)) if why.contains("cannot create")),
            "{origin:?}"
        );
    }
}
