//! [`verify`]: an image checked against its signed manifest, one function
//! per step, and the report and problems it gives.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use edgevit::{sha256_reader, TrustStore};
use tar::EntryType;

use super::{
    count, FileEntry, ImageManifest, SymlinkEntry, EXEC_MODE, FILE_MODE, FORMAT, MANIFEST, SIGNATURE,
};

const MAX_MANIFEST_BYTES: u64 = 16 << 20;
const MAX_SIGNATURE_BYTES: u64 = 4096;

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
    use super::super::render_manifest;
    use super::*;

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
