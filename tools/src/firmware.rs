//! Firmware images: one reproducible tar of a staging tree, led by a signed
//! manifest of every entry.
//!
//! An image holds, in this order: `MANIFEST.toml`, `MANIFEST.sig` (one hex
//! line: the ed25519 signature over the exact manifest bytes), then every
//! directory, regular file and symlink of the staging tree sorted by path.
//! Every header is a GNU header with mtime 0, uid/gid 0 and owner
//! `root:root`; directories and files with any exec bit get mode 0755, other
//! files 0644, symlinks 0777. Nothing else of the staging machine reaches the
//! image, so the same tree and key give the same bytes.
//!
//! Verification never extracts: it streams the archive once, checks the
//! signature with the trusted keys before it believes the manifest, then
//! checks each entry against the manifest and the manifest against the
//! entries.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgevit::{sha256_reader, SecretKey};
use serde::{Deserialize, Serialize};
use tar::{EntryType, Header};

mod verify;

pub use verify::{verify, ImageError, Problem, VerifyReport};

/// Name of the manifest, the first entry of an image.
pub const MANIFEST: &str = "MANIFEST.toml";
/// Name of the manifest's signature, the second entry of an image.
pub const SIGNATURE: &str = "MANIFEST.sig";
/// The manifest format this module writes and reads.
pub const FORMAT: u32 = 1;

const DIR_MODE: u32 = 0o755;
const EXEC_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
const SYMLINK_MODE: u32 = 0o777;

/// The signed list of everything an image holds besides the manifest and
/// its signature. Paths are relative, `/`-separated and sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    pub format: u32,
    #[serde(default)]
    pub directories: Vec<String>,
    #[serde(default, rename = "file")]
    pub files: Vec<FileEntry>,
    #[serde(default, rename = "symlink")]
    pub symlinks: Vec<SymlinkEntry>,
}

/// A regular file: its size, content hash and normalized mode (`"0755"` or `"0644"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub mode: String,
}

/// A symbolic link and its target, recorded as written (usually relative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymlinkEntry {
    pub path: String,
    pub target: String,
}

/// What `pack` wrote.
#[derive(Debug, Clone)]
pub struct PackSummary {
    pub image: PathBuf,
    pub directories: usize,
    pub files: usize,
    pub symlinks: usize,
    /// Bytes of file content in the staging tree.
    pub content_bytes: u64,
    /// Bytes of the image itself.
    pub image_bytes: u64,
    pub sha256: String,
    /// Id of the signing key (first 8 bytes of the public key in hex).
    pub key_id: String,
}

impl PackSummary {
    /// Entries of the image, the manifest and its signature included.
    pub fn entries(&self) -> usize {
        self.directories + self.files + self.symlinks + 2
    }
}

impl fmt::Display for PackSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "packed {}: {} entries ({} with {} bytes of content, {}, {}, {MANIFEST} and {SIGNATURE} \
             signed by key {}); image is {} bytes, sha256 {}",
            self.image.display(),
            self.entries(),
            count(self.files, "file"),
            self.content_bytes,
            count(self.symlinks, "symlink"),
            count(self.directories, "directory"),
            self.key_id,
            self.image_bytes,
            self.sha256,
        )
    }
}

/// `1 file`, `2 files`, `3 directories`.
fn count(n: usize, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

/// One entry of the staging tree, with its path relative to the root.
enum Node {
    Dir,
    File { source: PathBuf, mode: u32, size: u64, sha256: String },
    Symlink { target: String },
}

/// Packs the staging tree `root` into the image `out`, signed with `key`.
///
/// `root` may hold directories, regular files and symlinks only; its top
/// level must not hold `MANIFEST.toml` or `MANIFEST.sig`. The image is
/// written to a temporary file beside `out` and renamed over it, so `out`
/// is either the old file or the complete new image.
pub fn pack(root: &Path, key: &SecretKey, out: &Path) -> Result<PackSummary> {
    let tree = || format!("staging tree {}", root.display());
    let meta = fs::metadata(root).with_context(|| format!("{}: cannot read", tree()))?;
    if !meta.is_dir() {
        bail!("{}: expected a directory", tree());
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_abs = fs::canonicalize(parent)
        .with_context(|| format!("image {}: cannot use directory {}", out.display(), parent.display()))?;
    let root_abs = fs::canonicalize(root).with_context(tree)?;
    if parent_abs.starts_with(&root_abs) {
        bail!("image {}: must not be written inside the {}", out.display(), tree());
    }

    let mut nodes = BTreeMap::new();
    walk(root, "", &mut nodes).with_context(tree)?;
    for reserved in [MANIFEST, SIGNATURE] {
        if nodes.contains_key(reserved) {
            bail!("{}: {reserved}: the name is reserved for the image's own manifest", tree());
        }
    }
    if nodes.is_empty() {
        bail!("{}: expected at least one entry but it is empty", tree());
    }

    let manifest = manifest_of(&nodes);
    let manifest_bytes = render_manifest(&manifest)?;
    let signature = key.sign(&manifest_bytes);
    let signature_bytes = format!("{}\n", hex::encode(signature.to_bytes())).into_bytes();

    let temp = tempfile::Builder::new()
        .prefix(".edgevit-image-")
        .suffix(".tmp")
        .tempfile_in(parent)
        .with_context(|| format!("image {}: cannot create a temporary file", out.display()))?;
    let mut builder = tar::Builder::new(BufWriter::new(temp.as_file()));
    let written: Result<()> = (|| {
        append_file(&mut builder, MANIFEST, FILE_MODE, &manifest_bytes)?;
        append_file(&mut builder, SIGNATURE, FILE_MODE, &signature_bytes)?;
        for (path, node) in &nodes {
            match node {
                Node::Dir => {
                    let mut header = header(EntryType::Directory, DIR_MODE, 0);
                    builder.append_data(&mut header, format!("{path}/"), io::empty())?;
                }
                Node::File { source, mode, size, sha256 } => {
                    let file =
                        File::open(source).with_context(|| format!("{}: {path}: cannot read", tree()))?;
                    let mut header = header(EntryType::Regular, *mode, 0);
                    let mut entry = builder.append_writer(&mut header, path)?;
                    // One byte past the listed size is enough to tell that the file grew.
                    let copy = Tee { inner: file.take(size + 1), sink: &mut entry };
                    let (copied_size, copied_sha256) = sha256_reader(copy)
                        .with_context(|| format!("{}: {path}: cannot copy into the image", tree()))?;
                    entry.finish()?;
                    if copied_size != *size || copied_sha256 != *sha256 {
                        bail!("{}: {path}: changed while packing", tree());
                    }
                }
                Node::Symlink { target } => {
                    let mut header = header(EntryType::Symlink, SYMLINK_MODE, 0);
                    builder.append_link(&mut header, path, target)?;
                }
            }
        }
        builder.into_inner()?.flush()?;
        Ok(())
    })();
    written.with_context(|| format!("image {}: cannot write", out.display()))?;
    let mut file = temp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("image {}: cannot write", out.display()))?;
    let (image_bytes, sha256) = file
        .rewind()
        .and_then(|()| sha256_reader(file))
        .with_context(|| format!("image {}: cannot read back", out.display()))?;
    temp.persist(out).with_context(|| format!("image {}: cannot rename into place", out.display()))?;

    Ok(PackSummary {
        image: out.to_path_buf(),
        directories: manifest.directories.len(),
        files: manifest.files.len(),
        symlinks: manifest.symlinks.len(),
        content_bytes: manifest.files.iter().map(|f| f.size).sum(),
        image_bytes,
        sha256,
        key_id: hex::encode(&key.public().as_bytes()[..8]),
    })
}

/// Collects the entries below `dir` (whose path relative to the root is `rel`).
fn walk(dir: &Path, rel: &str, nodes: &mut BTreeMap<String, Node>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("{}: cannot list", show(rel)))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", show(rel)))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            bail!("{}/{}: expected a UTF-8 name", show(rel), name.to_string_lossy());
        };
        let path = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
        let source = entry.path();
        let meta = fs::symlink_metadata(&source).with_context(|| format!("{path}: cannot read"))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            nodes.insert(path.clone(), Node::Dir);
            walk(&source, &path, nodes)?;
        } else if kind.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 { EXEC_MODE } else { FILE_MODE };
            let hashed = File::open(&source).and_then(sha256_reader);
            let (size, sha256) = hashed.with_context(|| format!("{path}: cannot read"))?;
            nodes.insert(path, Node::File { source, mode, size, sha256 });
        } else if kind.is_symlink() {
            let target = fs::read_link(&source).with_context(|| format!("{path}: cannot read link"))?;
            let Some(target) = target.to_str() else {
                bail!("{path}: expected a UTF-8 symlink target");
            };
            nodes.insert(path, Node::Symlink { target: target.to_string() });
        } else {
            let what = edgevit::kind_name(kind);
            bail!("{path}: expected a regular file, directory or symlink but it is {what}");
        }
    }
    Ok(())
}

fn show(rel: &str) -> &str {
    if rel.is_empty() {
        "."
    } else {
        rel
    }
}

fn manifest_of(nodes: &BTreeMap<String, Node>) -> ImageManifest {
    let mut manifest =
        ImageManifest { format: FORMAT, directories: Vec::new(), files: Vec::new(), symlinks: Vec::new() };
    for (path, node) in nodes {
        match node {
            Node::Dir => manifest.directories.push(path.clone()),
            Node::File { mode, size, sha256, .. } => manifest.files.push(FileEntry {
                path: path.clone(),
                size: *size,
                sha256: sha256.clone(),
                mode: format!("{mode:04o}"),
            }),
            Node::Symlink { target } => {
                manifest.symlinks.push(SymlinkEntry { path: path.clone(), target: target.clone() })
            }
        }
    }
    manifest
}

fn render_manifest(manifest: &ImageManifest) -> Result<Vec<u8>> {
    let body = toml::to_string_pretty(manifest).context("cannot write MANIFEST.toml")?;
    Ok(format!("# edgevit firmware image manifest, format {FORMAT}; signed by {SIGNATURE}\n{body}")
        .into_bytes())
}

/// A GNU header with everything but type, mode and size fixed.
fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_username("root").expect("short name");
    header.set_groupname("root").expect("short name");
    header
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    bytes: &[u8],
) -> io::Result<()> {
    let mut header = header(EntryType::Regular, mode, bytes.len() as u64);
    builder.append_data(&mut header, path, bytes)
}

/// Passes on what it reads from `inner` and writes a copy of it to `sink`.
struct Tee<R, W> {
    inner: R,
    sink: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staging() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        fs::write(dir.path().join("usr/bin/edgevit"), b"binary").unwrap();
        dir
    }

    fn pack_error(root: &Path) -> String {
        let out = tempfile::tempdir().unwrap();
        let image = out.path().join("image.tar");
        let err = pack(root, &SecretKey::generate(), &image).unwrap_err();
        assert!(!image.exists(), "a failed pack must leave no image");
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0, "a failed pack must leave no temp file");
        format!("{err:#}")
    }

    #[test]
    fn pack_refuses_a_fifo() {
        let root = staging();
        let status = std::process::Command::new("mkfifo").arg(root.path().join("usr/bin/pipe")).status();
        assert!(status.unwrap().success(), "mkfifo failed");
        assert_eq!(
            pack_error(root.path()),
            format!(
                "staging tree {}: usr/bin/pipe: expected a regular file, directory or symlink but it is a FIFO",
                root.path().display()
            )
        );
    }

    #[test]
    fn pack_refuses_a_socket() {
        let root = staging();
        let _listener = std::os::unix::net::UnixListener::bind(root.path().join("usr/sock")).unwrap();
        assert_eq!(
            pack_error(root.path()),
            format!(
                "staging tree {}: usr/sock: expected a regular file, directory or symlink but it is a socket",
                root.path().display()
            )
        );
    }

    #[test]
    fn pack_refuses_a_device_when_one_can_be_made() {
        let root = staging();
        let made = std::process::Command::new("mknod")
            .arg(root.path().join("usr/null"))
            .args(["c", "1", "3"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            eprintln!("skipped: mknod needs privileges here");
            return;
        }
        assert_eq!(
            pack_error(root.path()),
            format!(
                "staging tree {}: usr/null: expected a regular file, directory or symlink but it is a character device",
                root.path().display()
            )
        );
    }

    #[test]
    fn pack_refuses_reserved_names() {
        let root = staging();
        fs::write(root.path().join(MANIFEST), b"").unwrap();
        assert_eq!(
            pack_error(root.path()),
            format!(
                "staging tree {}: MANIFEST.toml: the name is reserved for the image's own manifest",
                root.path().display()
            )
        );
    }
}
