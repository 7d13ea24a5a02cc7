//! Ed25519 keys: the signing key that seals a bundle manifest and the trust
//! store of public keys a device accepts.
//!
//! Key files are text: `#` comment lines, then one line of hex (32 bytes: the
//! secret seed in a `.key` file, the public key in a `.pub` file).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Where a device keeps the public keys it trusts, one `*.pub` file each.
pub const DEFAULT_TRUST_DIR: &str = "/etc/edgevit/keys";

/// Reads the single hex line of a key or signature file, skipping `#` comments.
fn read_hex(path: &Path, what: &str, len: usize) -> Result<Vec<u8>> {
    // A key file is one line of hex and a few comments.
    let bytes = crate::fsutil::read_regular(path, 64 << 10, what)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("{what} {}: expected hex text", path.display()))?;
    parse_hex(text, len).with_context(|| format!("{what} {}", path.display()))
}

/// A signature file: one line of hex (64 bytes), `#` comment lines allowed;
/// the form of `manifest.sig`, `channel.sig` and a firmware image's
/// signature.
pub fn parse_signature(bytes: &[u8]) -> Result<Signature> {
    let text = std::str::from_utf8(bytes).map_err(|_| anyhow::anyhow!("expected hex text"))?;
    let raw = parse_hex(text, 64)?;
    Ok(Signature::from_slice(&raw).expect("64 bytes, checked"))
}

/// Parses `len` bytes of hex from text whose other lines are `#` comments.
pub(crate) fn parse_hex(text: &str, len: usize) -> Result<Vec<u8>> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let Some(line) = lines.next() else { bail!("expected {len} bytes of hex but found no data line") };
    if lines.next().is_some() {
        bail!("expected one line of hex but found more");
    }
    let bytes = hex::decode(line).map_err(|e| anyhow::anyhow!("expected hex but {e}"))?;
    if bytes.len() != len {
        bail!("expected {len} bytes but found {}", bytes.len());
    }
    Ok(bytes)
}

/// A public key and where it came from, for messages.
#[derive(Clone)]
pub struct TrustedKey {
    pub key: VerifyingKey,
    pub origin: String,
}

impl TrustedKey {
    /// A short, stable id: the first 8 bytes of the key in hex.
    pub fn id(&self) -> String {
        hex::encode(&self.key.as_bytes()[..8])
    }
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id(), self.origin)
    }
}

/// The public keys whose signatures a bundle may carry.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    keys: Vec<TrustedKey>,
}

impl TrustStore {
    /// Keys from explicit files, plus every `*.pub` in `dir` when it exists.
    pub fn load(files: &[PathBuf], dir: Option<&Path>) -> Result<TrustStore> {
        let mut store = TrustStore::default();
        for file in files {
            store.add_file(file)?;
        }
        if let Some(dir) = dir.filter(|d| d.is_dir()) {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("trust dir {}: cannot list", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect();
            entries.sort();
            for file in entries {
                store.add_file(&file)?;
            }
        }
        Ok(store)
    }

    /// Adds the public key in `path`.
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let bytes = read_hex(path, "public key", 32)?;
        let key = VerifyingKey::try_from(bytes.as_slice())
            .map_err(|_| anyhow::anyhow!("public key {}: not a valid ed25519 point", path.display()))?;
        self.add(key, path.display().to_string());
        Ok(())
    }

    pub fn add(&mut self, key: VerifyingKey, origin: String) {
        self.keys.push(TrustedKey { key, origin });
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The trusted key whose signature over `message` is `signature`, if any.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.key.verify(message, signature).is_ok())
    }
}

/// Which public keys to trust: the flags of every verb that opens a bundle
/// or a channel.
#[derive(Debug, clap::Args)]
pub struct TrustArgs {
    /// Trust this public key file (repeatable), in addition to `--trust-dir`.
    #[arg(long = "trust", value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
    /// Directory of trusted `*.pub` keys.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TRUST_DIR)]
    pub trust_dir: PathBuf,
}

impl TrustArgs {
    pub fn store(&self) -> Result<TrustStore> {
        TrustStore::load(&self.trust, Some(&self.trust_dir))
    }
}

/// A secret signing key read from a `.key` file.
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn load(path: &Path) -> Result<SecretKey> {
        let bytes = read_hex(path, "signing key", 32)?;
        let seed: [u8; 32] = bytes.try_into().expect("length checked");
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    pub fn generate() -> SecretKey {
        SecretKey(SigningKey::generate(&mut rand_core::OsRng))
    }

    pub fn public(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        self.0.sign(message)
    }

    /// Writes `NAME.key` (mode 0600) and `NAME.pub`, refusing to overwrite.
    pub fn write_pair(&self, stem: &Path, comment: &str) -> Result<(PathBuf, PathBuf)> {
        let secret = stem.with_extension("key");
        let public = stem.with_extension("pub");
        for p in [&secret, &public] {
            if p.exists() {
                bail!("key {}: already exists, refusing to overwrite", p.display());
            }
        }
        let header = comment.lines().map(|l| format!("# {l}\n")).collect::<String>();
        crate::fsutil::write_atomic_mode(
            &secret,
            format!("{header}{}\n", hex::encode(self.0.to_bytes())).as_bytes(),
            0o600,
        )?;
        crate::fsutil::write_atomic_mode(
            &public,
            format!("{header}{}\n", hex::encode(self.public().as_bytes())).as_bytes(),
            0o644,
        )?;
        Ok((secret, public))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_hex_skips_comments_and_checks_length() {
        let text = "# test only\n\n00ff\n";
        assert_eq!(parse_hex(text, 2).unwrap(), vec![0, 255]);
        let err = parse_hex(text, 3).unwrap_err().to_string();
        assert_eq!(err, "expected 3 bytes but found 2");
        assert!(parse_hex("# nothing\n", 2).is_err());
        assert!(parse_hex("00\n11\n", 1).is_err());
        assert!(parse_hex("zz\n", 1).is_err());
    }

    #[test]
    fn signature_verifies_only_with_the_signing_key() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        let mut store = TrustStore::default();
        store.add(a.public(), "a".into());
        let sig = a.sign(b"manifest");
        assert_eq!(store.verify(b"manifest", &sig).unwrap().origin, "a");
        assert!(store.verify(b"manifesT", &sig).is_none());
        assert!(store.verify(b"manifest", &b.sign(b"manifest")).is_none());
    }
}
