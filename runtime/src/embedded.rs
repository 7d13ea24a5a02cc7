//! The default bundle, compiled into the binary so `edgevit` works with no
//! files around it. It is verified like any other bundle, against the
//! development key it was signed with (also compiled in, trusted for this
//! bundle only).

use anyhow::{Context, Result};

use crate::bundle::{Bundle, RawBundle, SignaturePolicy};
use crate::keys::TrustStore;

macro_rules! bundle_file {
    ($name:literal) => {
        ($name, include_bytes!(concat!("../../models/fmnist-vit-ggem/", $name)).as_slice())
    };
}

const ORIGIN: &str = "embedded default (models/fmnist-vit-ggem)";
const DEV_PUBLIC_KEY: &str = include_str!("../../models/keys/dev-test-only.pub");

/// Opens and verifies the embedded default bundle.
pub fn default_bundle() -> Result<Bundle> {
    let (manifest, signature) = (bundle_file!("manifest.toml").1, bundle_file!("manifest.sig").1);
    let files = [
        bundle_file!("model.onnx"),
        bundle_file!("labels.txt"),
        bundle_file!("golden/input.bin"),
        bundle_file!("golden/logits.bin"),
    ];
    let mut trust = TrustStore::default();
    let key = crate::keys::parse_hex(DEV_PUBLIC_KEY, 32).context("embedded development key")?;
    let key = ed25519_dalek::VerifyingKey::try_from(key.as_slice()).context("embedded development key")?;
    trust.add(key, "embedded development key".into());
    RawBundle::from_memory(manifest, signature, &files)
        .verify(ORIGIN.into(), &trust, SignaturePolicy::Require)
        .with_context(|| format!("bundle {ORIGIN}"))
}
