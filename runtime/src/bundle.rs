//! Model bundles: a signed manifest, the ONNX model, labels and golden I/O.
//!
//! A bundle is a directory or the same tree as one `.tar` file. Opening one
//! reads every payload file into memory once, checks the signature over the
//! exact manifest bytes, then each file's size and sha256: what the engine
//! loads is exactly what was verified.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use ed25519_dalek::Signature;
use sha2::{Digest, Sha256};

use crate::fsutil::{open_regular, read_regular};
use crate::keys::{SecretKey, TrustStore};
use crate::manifest::{FileEntry, Manifest, FORMAT};

pub const MANIFEST: &str = "manifest.toml";
pub const SIGNATURE: &str = "manifest.sig";
/// A manifest is a page of text; anything bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// A signature file is one line of hex.
const MAX_SIGNATURE_BYTES: u64 = 4096;
/// Upper bound for one payload file and for a whole tar bundle.
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 30;
/// Upper bound for a labels file: a million classes of a few words each.
pub(crate) const MAX_LABELS_BYTES: u64 = 64 << 20;
/// Largest image side a manifest may ask for.
const MAX_INPUT_SIDE: u32 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{SIGNATURE} is missing (sign the bundle with `edgevit bundle sign`)")]
    Unsigned,
    #[error("{SIGNATURE} does not verify with any trusted key (tried {0})")]
    BadSignature(usize),
    #[error("no trusted keys: pass --trust KEY.pub or install keys in {0}")]
    NoTrustedKeys(String),
    #[error("{MANIFEST} is not valid: {0}")]
    BadManifest(String),
    #[error("{file}: expected {expected} bytes but bundle has {found}")]
    Size { file: String, expected: u64, found: u64 },
    #[error("{file}: expected sha256 {expected} but bundle has {found}")]
    Digest { file: String, expected: String, found: String },
    #[error("{0}: listed in {MANIFEST} but missing")]
    Missing(String),
    #[error("{0}: not a plain relative path inside the bundle")]
    UnsafePath(String),
    #[error("{0}: expected {1}")]
    Inconsistent(String, String),
}

/// How to treat the manifest signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignaturePolicy {
    /// A trusted key must have signed the manifest.
    Require,
    /// Do not check it (explicit user choice, logged).
    Skip,
    /// The bundle is being created or signed: there is no signature to check yet.
    Signing,
}

/// What opening the bundle established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The trusted key (id and origin) that signed the manifest, or `None`
    /// when the check was skipped on request.
    pub signature: Option<String>,
}

/// An opened, verified bundle held in memory.
pub struct Bundle {
    /// Where it came from: a path, or `embedded default`.
    pub origin: String,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub verified: Verified,
    signature_bytes: Option<Vec<u8>>,
    files: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("origin", &self.origin)
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("verified", &self.verified)
            .finish()
    }
}

/// A bundle's golden I/O, one `Vec` per image.
#[derive(Clone, Debug, PartialEq)]
pub struct Golden {
    /// Preprocessed inputs.
    pub inputs: Vec<Vec<f32>>,
    /// Reference logits.
    pub logits: Vec<Vec<f32>>,
}

/// A bundle before verification: the manifest and its signature, read
/// first, and where the payload files are, read only once the manifest is
/// trusted and then each capped at the size it declares.
pub struct RawBundle {
    pub manifest: Vec<u8>,
    pub signature: Option<Vec<u8>>,
    payload: Payload,
}

/// Where a bundle's payload files come from.
enum Payload {
    Memory(BTreeMap<String, Vec<u8>>),
    Dir(PathBuf),
    /// A tar file and the size of each regular file in it, from its headers.
    Tar(PathBuf, BTreeMap<String, u64>),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The size and the sha256 (hex) of all that `reader` yields, read a block
/// at a time.
pub fn sha256_reader(reader: impl std::io::Read) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut std::io::BufReader::with_capacity(64 << 10, reader), &mut hasher)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Checks that `name` is a plain relative path (`a/b.bin`) and returns it normalized.
pub fn safe_relative_path(name: &str) -> Result<String, BundleError> {
    let path = Path::new(name);
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => {
                parts.push(p.to_str().ok_or_else(|| BundleError::UnsafePath(name.into()))?)
            }
            Component::CurDir => {}
            _ => return Err(BundleError::UnsafePath(name.into())),
        }
    }
    if parts.is_empty() {
        return Err(BundleError::UnsafePath(name.into()));
    }
    Ok(parts.join("/"))
}

impl RawBundle {
    /// A bundle directory: its manifest and signature now, the files the
    /// manifest lists when it is verified.
    pub fn from_dir(dir: &Path) -> Result<RawBundle> {
        let manifest = read_regular(&dir.join(MANIFEST), MAX_MANIFEST_BYTES, "bundle")?;
        let sig_path = dir.join(SIGNATURE);
        let signature = if sig_path.exists() {
            Some(read_regular(&sig_path, MAX_SIGNATURE_BYTES, "bundle")?)
        } else {
            None
        };
        Ok(RawBundle { manifest, signature, payload: Payload::Dir(dir.to_path_buf()) })
    }

    /// A bundle packed as a tar of regular files and directories. One pass
    /// over the headers (seeking past the data) checks every entry's kind,
    /// path and size and reads the manifest and its signature; the files
    /// are read in a second pass, once the manifest is verified.
    pub fn from_tar(path: &Path) -> Result<RawBundle> {
        let (file, _) = open_regular(path, "bundle")?;
        let mut archive = tar::Archive::new(file);
        let mut sizes = BTreeMap::new();
        let (mut manifest, mut signature) = (None, None);
        let mut total = 0u64;
        for entry in tar_entries(path, &mut archive)? {
            let (rel, mut entry) = entry?;
            let size = entry.size();
            total = total.saturating_add(size);
            if total > MAX_FILE_BYTES {
                anyhow::bail!("{}: expected at most {MAX_FILE_BYTES} bytes of payload", path.display());
            }
            let small = match rel.as_str() {
                MANIFEST => Some((&mut manifest, MAX_MANIFEST_BYTES)),
                SIGNATURE => Some((&mut signature, MAX_SIGNATURE_BYTES)),
                _ => None,
            };
            if let Some((slot, cap)) = small {
                if size > cap {
                    anyhow::bail!(
                        "{}: {rel}: expected at most {cap} bytes but it has {size}",
                        path.display()
                    );
                }
                *slot = Some(read_entry(path, &rel, &mut entry, size)?);
            }
            if sizes.insert(rel.clone(), size).is_some() {
                return Err(BundleError::Inconsistent(rel, "one entry per path".into()).into());
            }
        }
        let manifest = manifest.ok_or_else(|| BundleError::Missing(MANIFEST.into()))?;
        sizes.remove(MANIFEST);
        sizes.remove(SIGNATURE);
        Ok(RawBundle { manifest, signature, payload: Payload::Tar(path.to_path_buf(), sizes) })
    }

    /// A bundle from bytes already in memory (the embedded default).
    pub fn from_memory(manifest: &[u8], signature: &[u8], files: &[(&str, &[u8])]) -> RawBundle {
        RawBundle {
            manifest: manifest.to_vec(),
            signature: Some(signature.to_vec()),
            payload: Payload::Memory(files.iter().map(|(n, b)| (n.to_string(), b.to_vec())).collect()),
        }
    }

    /// Checks signature, manifest and every file; on success the bundle is usable.
    pub fn verify(self, origin: String, trust: &TrustStore, policy: SignaturePolicy) -> Result<Bundle> {
        let signature = match policy {
            SignaturePolicy::Skip => {
                log::warn!("bundle {origin}: signature check skipped on request");
                None
            }
            SignaturePolicy::Signing => None,
            SignaturePolicy::Require => {
                if trust.is_empty() {
                    return Err(BundleError::NoTrustedKeys(crate::keys::DEFAULT_TRUST_DIR.into()).into());
                }
                let sig = self.signature.as_deref().ok_or(BundleError::Unsigned)?;
                let sig = parse_signature(sig)?;
                let key = trust.verify(&self.manifest, &sig).ok_or(BundleError::BadSignature(trust.len()))?;
                Some(format!("{key:?}"))
            }
        };
        let manifest = parse_manifest(&self.manifest)?;
        check_manifest(&manifest)?;
        let mut files = self.payload.load(&manifest)?;
        for (name, entry) in &manifest.files {
            let rel = safe_relative_path(name)?;
            let bytes = files.get(&rel).ok_or_else(|| BundleError::Missing(rel.clone()))?;
            if bytes.len() as u64 != entry.size {
                return Err(
                    BundleError::Size { file: rel, expected: entry.size, found: bytes.len() as u64 }.into()
                );
            }
            let digest = sha256_hex(bytes);
            if digest != entry.sha256 {
                return Err(
                    BundleError::Digest { file: rel, expected: entry.sha256.clone(), found: digest }.into()
                );
            }
        }
        files.retain(|name, _| manifest.files.contains_key(name));
        let bundle = Bundle {
            origin,
            manifest,
            manifest_bytes: self.manifest,
            verified: Verified { signature },
            signature_bytes: self.signature,
            files,
        };
        bundle.check_contents()?;
        Ok(bundle)
    }
}

impl Payload {
    /// The files `manifest` lists, each read up to the size it declares; a
    /// file of another size is refused without reading it.
    fn load(self, manifest: &Manifest) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut files = BTreeMap::new();
        match self {
            Payload::Memory(all) => files = all,
            Payload::Dir(dir) => {
                for (name, entry) in &manifest.files {
                    let rel = safe_relative_path(name)?;
                    let path = dir.join(&rel);
                    let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                    if !meta.is_file() {
                        return Err(BundleError::Inconsistent(rel, "a regular file".into()).into());
                    }
                    if meta.len() != entry.size {
                        return Err(
                            BundleError::Size { file: rel, expected: entry.size, found: meta.len() }.into()
                        );
                    }
                    files.insert(rel, read_regular(&path, entry.size.min(MAX_FILE_BYTES), "bundle")?);
                }
            }
            Payload::Tar(path, sizes) => {
                let listed: BTreeMap<String, u64> = manifest
                    .files
                    .iter()
                    .map(|(name, entry)| Ok((safe_relative_path(name)?, entry.size)))
                    .collect::<Result<_, BundleError>>()?;
                for (rel, &expected) in &listed {
                    match sizes.get(rel) {
                        Some(&found) if found != expected => {
                            return Err(BundleError::Size { file: rel.clone(), expected, found }.into())
                        }
                        _ => {}
                    }
                }
                let (file, _) = open_regular(&path, "bundle")?;
                let mut archive = tar::Archive::new(file);
                for entry in tar_entries(&path, &mut archive)? {
                    let (rel, mut entry) = entry?;
                    if let Some(&size) = listed.get(&rel) {
                        files.insert(rel.clone(), read_entry(&path, &rel, &mut entry, size)?);
                    }
                }
            }
        }
        Ok(files)
    }
}

/// The regular files of the tar at `path` with their normalized paths,
/// seeking past data not read; directories are checked and skipped, and
/// anything else (links, devices, sparse files) is refused.
fn tar_entries<'a>(
    path: &'a Path,
    archive: &'a mut tar::Archive<std::fs::File>,
) -> Result<impl Iterator<Item = Result<(String, tar::Entry<'a, std::fs::File>)>> + 'a> {
    let corrupt = move || format!("{}: corrupt tar archive", path.display());
    let entries =
        archive.entries_with_seek().with_context(|| format!("{}: not a tar archive", path.display()))?;
    Ok(entries.filter_map(move |entry| {
        let entry = match entry.with_context(corrupt) {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            return match safe_relative_path(&name) {
                Err(_) if name == "./" => None,
                Err(e) => Some(Err(e.into())),
                Ok(_) => None,
            };
        }
        if !kind.is_file() {
            let e = BundleError::Inconsistent(name, "a regular file in the tar, not a link or device".into());
            return Some(Err(e.into()));
        }
        Some(safe_relative_path(&name).map(|rel| (rel, entry)).map_err(Into::into))
    }))
}

/// The `size` bytes of a tar entry, allocated as they are read.
fn read_entry(path: &Path, rel: &str, entry: &mut impl Read, size: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    entry
        .take(size)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: truncated tar entry {rel}", path.display()))?;
    if bytes.len() as u64 != size {
        anyhow::bail!("{}: truncated tar entry {rel}", path.display());
    }
    Ok(bytes)
}

fn parse_signature(bytes: &[u8]) -> Result<Signature> {
    crate::keys::parse_signature(bytes).with_context(|| SIGNATURE.to_string())
}

pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, BundleError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| BundleError::BadManifest("expected UTF-8 text".into()))?;
    toml::from_str(text).map_err(|e| BundleError::BadManifest(e.message().to_string()))
}

/// Checks the manifest on its own: shapes, names, references.
fn check_manifest(m: &Manifest) -> Result<(), BundleError> {
    let bad = |what: &str| Err(BundleError::BadManifest(what.into()));
    if m.format != FORMAT {
        return bad(&format!("expected format {FORMAT} but manifest has {}", m.format));
    }
    if m.name.is_empty() || m.compatible.is_empty() {
        return bad("expected a name and at least one compatible board family");
    }
    let i = &m.input;
    if i.width == 0 || i.height == 0 || i.width > MAX_INPUT_SIDE || i.height > MAX_INPUT_SIDE {
        return bad(&format!(
            "expected input sides in 1..={MAX_INPUT_SIDE} but manifest has {}x{}",
            i.width, i.height
        ));
    }
    if i.channels != 1 && i.channels != 3 {
        return bad(&format!("expected 1 or 3 input channels but manifest has {}", i.channels));
    }
    if i.mean.len() != i.channels as usize || i.std.len() != i.channels as usize {
        return bad("expected one mean and one std per input channel");
    }
    if i.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || i.mean.iter().any(|v| !v.is_finite()) {
        return bad("expected finite means and positive stds");
    }
    if m.model.classes == 0 {
        return bad("expected at least one class");
    }
    let mut referenced = vec![&m.model.file, &m.labels.file];
    if let Some(g) = &m.golden {
        referenced.extend([&g.input, &g.logits]);
        if g.top1.len() != g.count || g.count == 0 {
            return bad(&format!(
                "expected {} golden top-1 entries but manifest has {}",
                g.count,
                g.top1.len()
            ));
        }
        if g.top1.iter().any(|&c| c >= m.model.classes) {
            return bad("expected golden top-1 classes below the class count");
        }
        if !(g.tolerance.is_finite() && g.tolerance >= 0.0) {
            return bad("expected a non-negative golden tolerance");
        }
    }
    for name in referenced {
        if !m.files.contains_key(name) {
            return bad(&format!("expected {name} to be listed under [files]"));
        }
    }
    for name in m.files.keys() {
        if safe_relative_path(name)? != *name {
            return Err(BundleError::UnsafePath(name.clone()));
        }
    }
    Ok(())
}

impl Bundle {
    /// Opens the bundle at `path` (a directory or a `.tar`) and verifies it.
    pub fn open(path: &Path, trust: &TrustStore, policy: SignaturePolicy) -> Result<Bundle> {
        let origin = path.display().to_string();
        let raw = if path.is_dir() { RawBundle::from_dir(path) } else { RawBundle::from_tar(path) };
        raw.and_then(|raw| raw.verify(origin.clone(), trust, policy))
            .with_context(|| format!("bundle {origin}"))
    }

    /// A verified payload file.
    pub fn file(&self, name: &str) -> &[u8] {
        self.files.get(name).map(Vec::as_slice).expect("verified bundles hold every listed file")
    }

    pub fn model_bytes(&self) -> &[u8] {
        self.file(&self.manifest.model.file)
    }

    pub fn labels(&self) -> Vec<String> {
        parse_labels(self.file(&self.manifest.labels.file))
    }

    /// The golden inputs and reference logits, when the bundle has them.
    pub fn golden(&self) -> Option<Golden> {
        let g = self.manifest.golden.as_ref()?;
        let split = |file: &str, n: usize| f32s(self.file(file)).chunks(n).map(<[f32]>::to_vec).collect();
        Some(Golden {
            inputs: split(&g.input, self.manifest.input.len()),
            logits: split(&g.logits, self.manifest.model.classes),
        })
    }

    /// Writes the bundle as a directory at `dir`, which must not exist: the
    /// exact verified bytes of the manifest, its signature and every listed
    /// file, each synced, then the directories. `after_file` runs after
    /// each file with its name.
    pub fn write_dir(&self, dir: &Path, after_file: &mut dyn FnMut(&str)) -> Result<()> {
        std::fs::create_dir(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let mut entries = vec![(MANIFEST, self.manifest_bytes.as_slice())];
        entries.extend(self.signature_bytes.as_deref().map(|s| (SIGNATURE, s)));
        entries.extend(self.files.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
        let mut dirs = std::collections::BTreeSet::from([dir.to_path_buf()]);
        for (name, bytes) in entries {
            let path = dir.join(name);
            let parent = path.parent().expect("a file inside dir");
            if dirs.insert(parent.to_path_buf()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("{}: cannot create", parent.display()))?;
            }
            let mut f =
                std::fs::File::create(&path).with_context(|| format!("{}: cannot write", path.display()))?;
            std::io::Write::write_all(&mut f, bytes)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("{}: cannot write", path.display()))?;
            after_file(name);
        }
        for d in dirs.iter().rev() {
            crate::fsutil::sync_dir(d)?;
        }
        Ok(())
    }

    /// Consistency of the payload with the manifest, beyond hashes.
    fn check_contents(&self) -> Result<(), BundleError> {
        let m = &self.manifest;
        let labels = self.labels();
        if labels.len() != m.model.classes {
            return Err(BundleError::Inconsistent(
                m.labels.file.clone(),
                format!("{} labels (one per class) but bundle has {}", m.model.classes, labels.len()),
            ));
        }
        if let Some(g) = &m.golden {
            for (file, per_item) in [(&g.input, m.input.len()), (&g.logits, m.model.classes)] {
                let expected = (g.count * per_item * 4) as u64;
                let found = self.file(file).len() as u64;
                if found != expected {
                    return Err(BundleError::Size { file: file.clone(), expected, found });
                }
            }
        }
        Ok(())
    }
}

/// Labels: one per non-empty line, surrounding whitespace trimmed.
pub fn parse_labels(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Little-endian f32 values.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The `[files]` entry for `bytes`.
pub fn file_entry(bytes: &[u8]) -> FileEntry {
    FileEntry { size: bytes.len() as u64, sha256: sha256_hex(bytes) }
}

/// Signs the manifest of the bundle directory `dir` after checking that its
/// files match it. Writes `manifest.sig` atomically.
pub fn sign_dir(dir: &Path, key: &SecretKey) -> Result<PathBuf> {
    let raw = RawBundle::from_dir(dir).with_context(|| format!("bundle {}", dir.display()))?;
    let manifest = raw.manifest.clone();
    raw.verify(dir.display().to_string(), &TrustStore::default(), SignaturePolicy::Signing)
        .with_context(|| format!("bundle {}", dir.display()))?;
    let sig = key.sign(&manifest);
    let path = dir.join(SIGNATURE);
    crate::fsutil::write_atomic(&path, format!("{}\n", hex::encode(sig.to_bytes())).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths_are_plain_and_relative() {
        assert_eq!(safe_relative_path("./golden/input.bin").unwrap(), "golden/input.bin");
        for bad in ["/etc/passwd", "../x", "a/../../x", "", "."] {
            assert!(safe_relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn f32_round_trip() {
        let v = [1.5f32, -0.0, f32::MAX];
        assert_eq!(f32s(&f32_bytes(&v)), v);
    }

    #[test]
    fn labels_skip_blank_lines() {
        assert_eq!(parse_labels(b"a\n\n b \r\n"), vec!["a", "b"]);
    }
}
