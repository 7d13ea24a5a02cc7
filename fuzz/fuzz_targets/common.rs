//! Shared by the fuzz targets: the development trust store and a scratch
//! directory per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edgevit::TrustStore;

/// Trusts the development key, which signs the seed corpora.
pub fn trust() -> &'static TrustStore {
    static TRUST: OnceLock<TrustStore> = OnceLock::new();
    TRUST.get_or_init(|| {
        let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/keys/dev-test-only.pub");
        TrustStore::load(&[key], None).expect("the development public key")
    })
}

/// A directory of this process's own, removed at exit by the OS's tmp cleaning.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("edgevit-fuzz-").tempdir().expect("temp dir").keep())
}

/// Splits `data` after its first line: `(signature line, document)`, as
/// the signed files arrive (the signature is one hex line).
pub fn split_first_line(data: &[u8]) -> (&[u8], &[u8]) {
    data.split_at(data.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1))
}
