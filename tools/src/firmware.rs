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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgevit::sha256_reader;
use edgevit::{SecretKey, TrustStore};
use serde::{Deserialize, Serialize};
use tar::{EntryType, Header};

/// Name of the manifest, the first entry of an image.
pub const MANIFEST: &str = "MANIFEST.toml";
/// Name of the manifest's signature, the second entry of an image.
pub const SIGNATURE: &str = "MANIFEST.sig";
/// The manifest format this module writes and reads.
pub const FORMAT: u32 = 1;

const MAX_MANIFEST_BYTES: u64 = 16 << 20;
const MAX_SIGNATURE_BYTES: u64 = 4096;
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

/// What `verify` checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub image: String,
    /// The trusted key that signed the manifest: id and where it came from.
    pub signed_by: String,
    pub directories: usize,
    pub files: usize,
    pub symlinks: usize,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "image {}: verified {}, {} and {} against {MANIFEST} signed by {}",
            self.image,
            count(self.files, "file"),
            count(self.symlinks, "symlink"),
            count(self.directories, "directory"),
            self.signed_by
        )
    }
}

/// One reason an image is not what its manifest says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("expected {MANIFEST} then {SIGNATURE} as the first entries but found {0}")]
    Layout(String),
    #[error("{SIGNATURE}: {0}")]
    BadSignatureFile(String),
    #[error("{SIGNATURE} does not verify with any trusted key")]
    BadSignature,
    #[error("{MANIFEST}: {0}")]
    BadManifest(String),
    #[error("{0}: unsafe path (absolute, empty or with ..)")]
    UnsafePath(String),
    #[error("{path}: expected a regular file, directory or symlink but image has a {kind}")]
    Unsupported { path: String, kind: String },
    #[error("{0}: more than one entry with this path")]
    Duplicate(String),
    #[error("{0}: not listed in {MANIFEST}")]
    NotListed(String),
    #[error("{0}: listed in {MANIFEST} but missing")]
    Missing(String),
    #[error("{path}: expected a {expected} but image has a {found}")]
    Kind { path: String, expected: &'static str, found: &'static str },
    #[error("{path}: expected {expected} bytes but image has {found}")]
    Size { path: String, expected: u64, found: u64 },
    #[error("{path}: expected sha256 {expected} but image has {found}")]
    Sha256 { path: String, expected: String, found: String },
    #[error("{path}: expected mode {expected:04o} but image has {found:04o}")]
    Mode { path: String, expected: u32, found: u32 },
    #[error("{path}: expected symlink target {expected} but image has {found}")]
    Target { path: String, expected: String, found: String },
}

/// An image that failed verification: every problem found, one per line,
/// each prefixed with `image PATH: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    pub image: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "image {}: {problem}", self.image)?;
        }
        Ok(())
    }
}

impl std::error::Error for ImageError {}

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

/// What the manifest says one path is.
enum Expected<'a> {
    Dir,
    File(&'a FileEntry, u32),
    Symlink(&'a SymlinkEntry),
}

impl Expected<'_> {
    /// The word `kind_name` has for a tar entry of this kind.
    fn kind(&self) -> &'static str {
        match self {
            Expected::Dir => "directory",
            Expected::File(..) => "regular file",
            Expected::Symlink(_) => "symlink",
        }
    }
}

/// Verifies the image at `image` against the keys in `trust`.
///
/// The steps, in the order the archive is read: the manifest and its
/// signature must lead it; the signature must verify with a trusted key
/// before the manifest is parsed; the manifest must parse and list each
/// normalized path once, all its bad listings reported together; then each
/// further entry must be listed, as its kind, with the mode, size and
/// sha256 or target listed, and each listed path must be there, all their
/// problems reported together.
///
/// Fails with an [`ImageError`] (every problem found, one per line) when the
/// image does not match its signed manifest, and with a plain error when the
/// file cannot be read as a tar at all.
pub fn verify(image: &Path, trust: &TrustStore) -> Result<VerifyReport> {
    let name = image.display().to_string();
    if trust.is_empty() {
        bail!("image {name}: no trusted keys to check {SIGNATURE} with");
    }
    let file = File::open(image).with_context(|| format!("image {name}: cannot open"))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = archive.entries().with_context(|| format!("image {name}"))?;
    let fail = |problems| image_error(&name, problems);

    let manifest_bytes = read_leading(&mut entries, MANIFEST, MAX_MANIFEST_BYTES, &name)?;
    let signature_bytes = read_leading(&mut entries, SIGNATURE, MAX_SIGNATURE_BYTES, &name)?;
    let signed_by = check_signature(&manifest_bytes, &signature_bytes, trust).map_err(|p| fail(vec![p]))?;
    let manifest = parse_manifest(&manifest_bytes).map_err(|p| fail(vec![p]))?;
    let expected = expected_entries(&manifest).map_err(fail)?;
    let problems = check_entries(entries, &expected, &name)?;
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    Ok(VerifyReport {
        image: name,
        signed_by,
        directories: manifest.directories.len(),
        files: manifest.files.len(),
        symlinks: manifest.symlinks.len(),
    })
}

/// The [`ImageError`] of the image called `name`.
fn image_error(name: &str, problems: Vec<Problem>) -> anyhow::Error {
    anyhow::Error::new(ImageError { image: name.to_string(), problems })
}

/// The bytes of the next entry, which must be the regular file `expected`
/// of at most `cap` bytes.
fn read_leading<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    expected: &str,
    cap: u64,
    name: &str,
) -> Result<Vec<u8>> {
    let layout = |found: String| image_error(name, vec![Problem::Layout(found)]);
    let Some(entry) = entries.next() else {
        return Err(layout("the end of the archive".into()));
    };
    let mut entry = entry.with_context(|| format!("image {name}"))?;
    let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if path != expected || !entry.header().entry_type().is_file() {
        return Err(layout(path));
    }
    if entry.size() > cap {
        return Err(layout(format!("{path} of {} bytes", entry.size())));
    }
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).with_context(|| format!("image {name}"))?;
    Ok(bytes)
}

/// The trusted key whose signature `signature` (the bytes of
/// `MANIFEST.sig`) is over `manifest`, as `ID (ORIGIN)`.
fn check_signature(manifest: &[u8], signature: &[u8], trust: &TrustStore) -> Result<String, Problem> {
    let signature =
        edgevit::parse_signature(signature).map_err(|e| Problem::BadSignatureFile(format!("{e:#}")))?;
    let signer = trust.verify(manifest, &signature).ok_or(Problem::BadSignature)?;
    Ok(format!("{} ({})", signer.id(), signer.origin))
}

/// What the manifest lists, by path: every path normalized, listed once
/// and neither of the image's own two names, every file's mode 0755 or
/// 0644. Fails with every listing that is not.
fn expected_entries(manifest: &ImageManifest) -> Result<BTreeMap<&str, Expected<'_>>, Vec<Problem>> {
    let listed = manifest
        .directories
        .iter()
        .map(|d| (d.as_str(), Ok(Expected::Dir)))
        .chain(manifest.files.iter().map(|f| (f.path.as_str(), parse_mode(f).map(|m| Expected::File(f, m)))))
        .chain(manifest.symlinks.iter().map(|s| (s.path.as_str(), Ok(Expected::Symlink(s)))));
    let mut expected = BTreeMap::new();
    let mut problems = Vec::new();
    for (path, what) in listed {
        if normalize(path.as_bytes()).as_deref() != Ok(path) || path == MANIFEST || path == SIGNATURE {
            problems.push(Problem::BadManifest(format!("{path}: expected a normalized relative path")));
            continue;
        }
        match what {
            Err(problem) => problems.push(problem),
            Ok(what) => {
                if expected.insert(path, what).is_some() {
                    problems.push(Problem::BadManifest(format!("{path}: listed more than once")));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(expected)
    } else {
        Err(problems)
    }
}

/// Every problem of the entries after the signature, then of the listed
/// paths none of them had. A tar or read error stops the walk.
fn check_entries<R: Read>(
    entries: tar::Entries<'_, R>,
    expected: &BTreeMap<&str, Expected>,
    name: &str,
) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let mut seen: BTreeSet<String> = [MANIFEST.to_string(), SIGNATURE.to_string()].into();
    for entry in entries {
        let mut entry = entry.with_context(|| format!("image {name}"))?;
        match listing_of(&entry, expected, &mut seen) {
            Ok((path, what)) => problems.extend(check_content(&mut entry, path, what, name)?),
            Err(problem) => problems.push(problem),
        }
    }
    let missing = expected.keys().filter(|path| !seen.contains(**path));
    problems.extend(missing.map(|path| Problem::Missing(path.to_string())));
    Ok(problems)
}

/// The entry's normalized path and what the manifest lists there, once the
/// path is safe and not seen before (it is then marked seen), the entry's
/// kind one an image may hold, and the path listed as that kind.
fn listing_of<'m, R: Read>(
    entry: &tar::Entry<'_, R>,
    expected: &'m BTreeMap<&str, Expected<'m>>,
    seen: &mut BTreeSet<String>,
) -> Result<(String, &'m Expected<'m>), Problem> {
    let path = normalize(&entry.path_bytes())?;
    if !seen.insert(path.clone()) {
        return Err(Problem::Duplicate(path));
    }
    let found = match kind_name(entry.header().entry_type()) {
        Ok(found) => found,
        Err(kind) => return Err(Problem::Unsupported { path, kind }),
    };
    let Some(what) = expected.get(path.as_str()) else {
        return Err(Problem::NotListed(path));
    };
    if what.kind() != found {
        return Err(Problem::Kind { path, expected: what.kind(), found });
    }
    Ok((path, what))
}

/// Checks an entry of the kind listed against the rest of its listing.
fn check_content<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: String,
    what: &Expected,
    name: &str,
) -> Result<Vec<Problem>> {
    match what {
        Expected::Dir => Ok(Vec::new()),
        Expected::File(file, mode) => check_file(entry, path, file, *mode, name),
        Expected::Symlink(link) => Ok(check_target(entry, path, link).into_iter().collect()),
    }
}

/// A file's mode, then its size and, only when the size is right, the
/// sha256 of its bytes.
fn check_file<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: String,
    file: &FileEntry,
    mode: u32,
    name: &str,
) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let found_mode = entry.header().mode().with_context(|| format!("image {name}"))? & 0o7777;
    if found_mode != mode {
        problems.push(Problem::Mode { path: path.clone(), expected: mode, found: found_mode });
    }
    if entry.size() != file.size {
        problems.push(Problem::Size { path, expected: file.size, found: entry.size() });
        return Ok(problems);
    }
    let (_, found) = sha256_reader(entry).with_context(|| format!("image {name}: {path}"))?;
    if found != file.sha256 {
        problems.push(Problem::Sha256 { path, expected: file.sha256.clone(), found });
    }
    Ok(problems)
}

/// A symlink's target; one that cannot be read counts as empty.
fn check_target<R: Read>(entry: &tar::Entry<'_, R>, path: String, link: &SymlinkEntry) -> Option<Problem> {
    let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
    let found = target.unwrap_or_default();
    (found != link.target).then(|| Problem::Target { path, expected: link.target.clone(), found })
}

fn parse_manifest(bytes: &[u8]) -> Result<ImageManifest, Problem> {
    let text = std::str::from_utf8(bytes).map_err(|_| Problem::BadManifest("expected UTF-8 text".into()))?;
    let manifest: ImageManifest =
        toml::from_str(text).map_err(|e| Problem::BadManifest(e.message().trim().to_string()))?;
    if manifest.format != FORMAT {
        return Err(Problem::BadManifest(format!(
            "expected format {FORMAT} but manifest has {}",
            manifest.format
        )));
    }
    Ok(manifest)
}

fn parse_mode(file: &FileEntry) -> Result<u32, Problem> {
    match u32::from_str_radix(&file.mode, 8) {
        Ok(mode) if mode == EXEC_MODE || mode == FILE_MODE => Ok(mode),
        _ => Err(Problem::BadManifest(format!(
            "{}: expected mode 0755 or 0644 but manifest has {}",
            file.path, file.mode
        ))),
    }
}

/// A tar entry's path as a plain relative path (`a/b`): no leading `/`, no
/// `..`, `.` components and a trailing `/` dropped.
fn normalize(raw: &[u8]) -> Result<String, Problem> {
    let unsafe_path = || Problem::UnsafePath(String::from_utf8_lossy(raw).into_owned());
    let text = std::str::from_utf8(raw).map_err(|_| unsafe_path())?;
    if text.starts_with('/') {
        return Err(unsafe_path());
    }
    let parts: Vec<&str> = text.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(unsafe_path());
    }
    Ok(parts.join("/"))
}

/// The manifest's word for a tar entry type, or what to call an unsupported one.
fn kind_name(kind: EntryType) -> Result<&'static str, String> {
    if kind.is_file() {
        Ok("regular file")
    } else if kind.is_dir() {
        Ok("directory")
    } else if kind.is_symlink() {
        Ok("symlink")
    } else if kind.is_hard_link() {
        Err("hard link".into())
    } else if kind.is_character_special() {
        Err("character device".into())
    } else if kind.is_block_special() {
        Err("block device".into())
    } else if kind.is_fifo() {
        Err("FIFO".into())
    } else {
        Err(format!("entry of type {:?}", kind.as_byte() as char))
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

    #[test]
    fn normalize_refuses_escapes() {
        assert_eq!(normalize(b"./etc/edgevit/").unwrap(), "etc/edgevit");
        for bad in [&b"/etc/passwd"[..], b"../x", b"a/../../x", b".", b""] {
            assert!(normalize(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn manifest_round_trips() {
        let manifest = ImageManifest {
            format: FORMAT,
            directories: vec!["etc".into()],
            files: vec![FileEntry {
                path: "etc/a".into(),
                size: 1,
                sha256: edgevit::sha256_hex(b"a"),
                mode: "0644".into(),
            }],
            symlinks: vec![SymlinkEntry { path: "etc/b".into(), target: "a".into() }],
        };
        let bytes = render_manifest(&manifest).unwrap();
        assert_eq!(parse_manifest(&bytes).unwrap(), manifest);
    }
}
