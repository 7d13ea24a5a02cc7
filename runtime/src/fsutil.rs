//! File writes that never leave a half-written file where a good one was,
//! and reads of the paths users name that refuse what is not a bounded
//! regular file.

use std::fs::{File, FileType, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Opens `path` for reading if it is a regular file, and returns it with its
/// length. Directories, character and block devices (`/dev/zero`), FIFOs and
/// sockets are refused: they never end, block, or are not data. The open is
/// non-blocking, so a FIFO cannot hang it, and the type is taken from the
/// opened file, so a path swapped after a check cannot slip through. Errors
/// name the file as `{what} {path}`.
pub fn open_regular(path: &Path, what: &str) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("{what} {}: cannot read", path.display()))?;
    let meta = file.metadata().with_context(|| format!("{what} {}: cannot read", path.display()))?;
    if meta.is_file() {
        return Ok((file, meta.len()));
    }
    bail!("{what} {}: expected a regular file but it is {}", path.display(), kind_name(meta.file_type()))
}

/// What a file type is, as an error message says it: `a FIFO`, `a directory`.
pub fn kind_name(kind: FileType) -> &'static str {
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symlink"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "of an unknown type"
    }
}

/// Reads the regular file `path` whole if it has at most `cap` bytes; see
/// [`open_regular`]. A file that grows while it is read is cut at `cap + 1`
/// bytes and refused, so memory stays bounded by `cap` either way.
pub fn read_regular(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path, what)?;
    let too_big =
        |n: u64| anyhow::anyhow!("{what} {}: expected at most {cap} bytes but it has {n}", path.display());
    if len > cap {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{what} {}: cannot read", path.display()))?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory:
/// write, fsync, rename over `path`, fsync the directory. A crash at any
/// instant leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o644)
}

/// [`write_atomic`] with the new file's permission bits.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_via_temporary(path, bytes, mode, true)
}

/// Replaces `path` through a temporary file and a rename, without fsync:
/// readers never see a partial file, but a power cut may lose the newest
/// one. For frequent, disposable output such as snapshots.
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temporary(path, bytes, 0o644, false)
}

/// Writes `bytes` to `path` only when nothing is there yet: a complete,
/// synced temporary file is linked into place, which fails rather than
/// replaces, then the directory is synced. Readers see the whole file or
/// none, and of two processes racing to create it, one wins and the other
/// finds the winner's file. Returns whether this call created it.
pub fn create_atomic(path: &Path, bytes: &[u8]) -> Result<bool> {
    let (dir, tmp) = temporary_beside(path)?;
    let result = (|| -> std::io::Result<bool> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let created = match std::fs::hard_link(&tmp, path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        std::fs::remove_file(&tmp)?;
        File::open(dir)?.sync_all()?;
        Ok(created)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.with_context(|| format!("{}: cannot write", path.display()))
}

/// Syncs a directory, making the renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("{}: cannot sync", dir.display()))
}

/// The directory of `path` and a temporary name in it that no other
/// process writes.
fn temporary_beside(path: &Path) -> Result<(&Path, std::path::PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    Ok((dir, dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()))))
}

fn write_via_temporary(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<()> {
    let (dir, tmp) = temporary_beside(path)?;
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.png");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular(&file, 5, "image").unwrap(), b"12345");
        let err = read_regular(&file, 4, "image").unwrap_err().to_string();
        assert_eq!(err, format!("image {}: expected at most 4 bytes but it has 5", file.display()));
        let fifo = dir.path().join("fifo.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, kind) in
            [(dir.path(), "a directory"), (&fifo, "a FIFO"), (Path::new("/dev/zero"), "a character device")]
        {
            let err = read_regular(path, 1 << 20, "image").unwrap_err().to_string();
            assert_eq!(err, format!("image {}: expected a regular file but it is {kind}", path.display()));
        }
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_keeps_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device-id");
        assert!(create_atomic(&path, b"one").unwrap());
        assert!(!create_atomic(&path, b"two").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("x");
        assert!(write_atomic(&path, b"x").is_err());
        assert!(!path.exists());
    }

    #[test]
    fn a_failed_replace_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        // Renaming a file over a directory fails after the temporary is written.
        let path = tmp.path().join("frame-000001.png");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"").unwrap();
        let err = write_replace(&path, b"png").unwrap_err();
        assert_eq!(err.to_string(), format!("{}: cannot write", path.display()));
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["frame-000001.png"]);
    }
}
